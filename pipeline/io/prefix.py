"""Where masklets go: per-video files plus state markers under one output prefix (any fsspec URI).

Layout::

    {output}/masklets/{video_id}.json | .parquet    the masklets (whole-object put)
    {output}/_state/done/{video_id}.json            written only after the masklet file is complete
    {output}/_state/failed/{video_id}.json          reason of a video that failed after its retries
    {output}/_state/provenance.json                 the claim: identity of the results in this prefix + a token
    {output}/config.yaml, summary.json, _SUCCESS    at the end of a job (_SUCCESS last; per shard when sharded)

Every write is atomic (a whole-object put, or a local temporary file renamed), so a reader never sees a partial
file; a task that runs twice rewrites the same keys. Resume = ``done_records()``: one listing of the markers and one
of the masklet files, then the markers; a marker that does not parse, or whose masklet file is gone, counts as not
done, and each one carries the digest of what produced it. The markers' bodies are ``pipeline.records.DoneMarker``
and ``FailedMarker``; the prefix's identity is ``PrefixIdentity``.

A job claims the prefix before any work (``claim``): it creates the provenance record only if none is there (an
atomic create), so of two jobs racing for one prefix exactly one gets it, and the record's random token names the
claim. Every masklet file, marker and summary a claimed sink writes is fenced: it is written only while the record
still holds that token, so a job whose claim was taken over (``output.overwrite`` by another job) stops writing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid

from pipeline.io.keys import VIDEO_ID_RULE, usable_video_id
from pipeline.io.masklets import Masklets, masklets_from_bytes, masklets_to_bytes
from pipeline.io.storage import (create_bytes, exists, filesystem, join_uri, list_names, list_sizes, read_bytes,
                                 retrying, write_bytes)
from pipeline.records import ClaimLost, DoneMarker, FailedMarker, PrefixIdentity, ProvenanceError, WorkerResult

log = logging.getLogger(__name__)

FORMATS = {"sav_json": ".json", "parquet": ".parquet"}
_END_OF_JOB_FILE = re.compile(r"^(summary(-\d+-of-\d+)?\.json|_SUCCESS(-\d+-of-\d+)?|config(-\d+-of-\d+)?\.yaml)$")
# What the tools derive from the masklets under the prefix by default (jobs.report, jobs.render, jobs.export,
# jobs.evaluate): an overwrite removes them with the masklets, so no report or export of the old model survives.
DERIVED = re.compile(r"^(report|render|export_[a-z_]+|eval_objects\.csv|eval_videos\.csv)$")


def _json(data: dict) -> bytes:
    return json.dumps(data, indent=None, separators=(",", ":"), sort_keys=True).encode()


class Sink:
    """Masklet files and state markers of one output prefix; every call retries transient storage errors for up
    to ``retry_s`` seconds (``pipeline.storage.retrying``) before it raises. ``claim`` is the token of the claim
    its writes are fenced by (the driver's ``claim`` returns it, workers get it in their spec); None: not fenced
    (tools that read, tests)."""

    def __init__(self, output_uri: str, fmt: str, storage_options: dict | None, retry_s: float,
                 claim: str | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; expected one of {sorted(FORMATS)}")
        self.uri = output_uri.rstrip("/")
        self.fmt = fmt
        self.storage_options = storage_options
        self.retry_s = retry_s
        self.claim_token = claim

    def _path(self, *parts: str) -> str:
        return join_uri(self.uri, *parts)

    def _put(self, uri: str, data: bytes) -> None:
        retrying(lambda: write_bytes(uri, data, self.storage_options), f"writing {uri}", self.retry_s)

    def _get(self, uri: str) -> bytes:
        return retrying(lambda: read_bytes(uri, self.storage_options), f"reading {uri}", self.retry_s)

    @staticmethod
    def _checked(video_id: str) -> str:
        if not usable_video_id(video_id):
            raise ValueError(f"video_id {video_id!r} is not usable in an output key ({VIDEO_ID_RULE})")
        return video_id

    def masklet_uri(self, video_id: str) -> str:
        """URI of the masklet file of ``video_id``."""
        return self._path("masklets", self._checked(video_id) + FORMATS[self.fmt])

    def write(self, m: Masklets) -> str:
        """Write the masklets of one video (one put; fenced); returns its URI."""
        uri = self.masklet_uri(m.video_id)
        data = masklets_to_bytes(m, self.fmt)
        self.fence()
        self._put(uri, data)
        return uri

    def read(self, video_id: str) -> Masklets:
        """The masklets written for ``video_id``."""
        return masklets_from_bytes(self._get(self.masklet_uri(video_id)), self.fmt)

    def mark_done(self, result: WorkerResult) -> None:
        """Done marker of a done ``result`` (call after ``write``; fenced); clears a failed marker left by an earlier
        run."""
        video_id = result.video_id
        marker = DoneMarker(video_id, result.digest, self.masklet_uri(video_id), result.frames, result.objects,
                            result.seconds, time.time(), result.worker)
        self.fence()
        self._put(self._path("_state", "done", self._checked(video_id) + ".json"), _json(marker.to_json()))
        fs, path = filesystem(self._path("_state", "failed", video_id + ".json"), self.storage_options)

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)

        retrying(remove, f"removing {path}", self.retry_s)

    def mark_failed(self, result: WorkerResult) -> None:
        """Failed marker of a final failed ``result``, with its reason (the video is not marked done, so a re-run
        retries it; fenced)."""
        marker = FailedMarker.of(result, time.time())
        self.fence()
        self._put(self._path("_state", "failed", self._checked(result.video_id) + ".json"), _json(marker.to_json()))

    def _ids(self, state: str) -> set[str]:
        uri = self._path("_state", state)
        names = retrying(lambda: list_names(uri, self.storage_options), f"listing {uri}", self.retry_s)
        return {n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")}

    def done_ids(self) -> set[str]:
        """Videos with a done marker (one listing), parseable or not."""
        return self._ids("done")

    def failed_ids(self) -> set[str]:
        """Videos with a failed marker (one listing)."""
        return self._ids("failed")

    def done_records(self) -> dict[str, DoneMarker | None]:
        """Every done marker by video (one listing, then the markers fetched concurrently); None for a marker that
        does not parse (a truncated write): such a video counts as not done. A marker whose masklet file is gone
        (one listing of their folder) is left out: its video is not done either."""
        ids = sorted(self.done_ids())
        if not ids:
            return {}
        folder = self.masklet_uri(ids[0]).rsplit("/", 1)[0]
        present = retrying(lambda: list_names(folder, self.storage_options), f"listing {folder}", self.retry_s)
        for video_id in [v for v in ids if self.masklet_uri(v).rsplit("/", 1)[1] not in present]:
            log.warning("%s: done marker without its file %s; not done", video_id, self.masklet_uri(video_id))
            ids.remove(video_id)
        if not ids:
            return {}
        uris = {self._path("_state", "done", v + ".json"): v for v in ids}
        fs, _ = filesystem(self.uri, self.storage_options)
        paths = {filesystem(u, self.storage_options)[1]: v for u, v in uris.items()}
        blobs = retrying(lambda: fs.cat(list(paths), on_error="return"), f"reading done markers under {self.uri}",
                         self.retry_s)
        records: dict[str, DoneMarker | None] = {}
        for path, video_id in paths.items():
            blob = blobs.get(path)
            try:
                records[video_id] = DoneMarker.from_json(json.loads(blob)) if isinstance(blob, bytes) else None
            except ValueError:
                records[video_id] = None
        return records

    def read_done(self, video_id: str) -> DoneMarker:
        """The done marker of a video."""
        return DoneMarker.from_json(json.loads(self._get(self._path("_state", "done", self._checked(video_id) +
                                                                   ".json"))))

    def read_failed(self, video_id: str) -> FailedMarker:
        """The failed marker of a video."""
        return FailedMarker.from_json(json.loads(self._get(self._path("_state", "failed", self._checked(video_id) +
                                                                     ".json"))))

    def write_summary(self, summary: dict, resolved_config_yaml: str, shard: tuple[int, int] | None = None) -> None:
        """config.yaml and summary.json, then the _SUCCESS marker last (only when every video is done).

        A shard ``(k, n)`` of a sharded job (n > 1) writes ``config-{k}-of-{n}.yaml``, ``summary-{k}-of-{n}.json``
        and ``_SUCCESS-{k}-of-{n}`` so that shards sharing one prefix do not overwrite each other.
        """
        tag = f"-{shard[0]}-of-{shard[1]}" if shard is not None and shard[1] > 1 else ""
        self.fence()
        self._put(self._path(f"config{tag}.yaml"), resolved_config_yaml.encode())
        self._put(self._path(f"summary{tag}.json"), json.dumps(summary, indent=2, sort_keys=True).encode())
        success = self._path(f"_SUCCESS{tag}")
        if summary.get("status") == "ok":
            self._put(success, b"")
        else:  # a _SUCCESS of an earlier run must not outlive videos that now failed
            fs, path = filesystem(success, self.storage_options)

            def remove() -> None:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(path)

            retrying(remove, f"removing {success}", self.retry_s)

    def finished(self, shard: tuple[int, int]) -> bool:
        """Whether a run of ``shard`` ``(k, n)`` ended with its summary (its ``_SUCCESS`` marker exists)."""
        k, n = shard
        uri = self._path(f"_SUCCESS-{k}-of-{n}" if n > 1 else "_SUCCESS")
        return retrying(lambda: exists(uri, self.storage_options), f"checking {uri}", self.retry_s)

    def claim(self, prov: dict, overwrite: bool = False, decoder: str | None = None) -> str:
        """Claim the prefix for the job of ``prov`` (its videos decoded by ``decoder``); returns the claim's token,
        which this sink's writes are fenced by from then on (``claim_token``).

        The claim is ``_state/provenance.json``, created only where none is (``storage.create_bytes``: a conditional
        put on S3, a hard link locally): of jobs racing for an empty prefix exactly one creates it. A record of the
        same ``PrefixIdentity`` (model, mask options, masklet format, decoder) is a resume and its token is adopted,
        so every shard job of one run gets in. Another identity, or results without a record, is refused with
        ProvenanceError unless ``overwrite``: then the old record is deleted first (a job still writing under it is
        fenced out), the old results cleared, and the record created as on an empty prefix; a job that loses that
        creation to another is judged as without overwrite.
        """
        record = {**prov, **self._identity_fields(decoder), "claim": uuid.uuid4().hex}
        mine = PrefixIdentity.of(record)
        held = self._record()
        cleared = False
        if held is None and self._holds_results():
            if not overwrite:
                raise ProvenanceError(f"{self.uri} holds results without a provenance record (another model's?)")
            self._clear()
            cleared = True
        for _ in range(4):  # the record can change under us: other jobs creating or clearing it
            if held is None:
                if retrying(lambda: create_bytes(self._record_uri(), _json(record), self.storage_options),
                            f"creating {self._record_uri()}", self.retry_s):
                    self.claim_token = record["claim"]
                    return self.claim_token
                held = self._record()
                if held is None:
                    continue
            changed = self._identity_of(held).differences(mine)
            if not changed:
                self.claim_token = str(held.get("claim", ""))  # "": a record of an earlier release
                return self.claim_token
            if not overwrite or cleared:
                raise ProvenanceError(self._refusal(changed))
            again = self._record()
            if again != held:  # another job (a shard of this run?) replaced it since: judge the new one
                held = again
                continue
            self._clear()
            cleared, held = True, None
        raise ProvenanceError(f"{self.uri}: its provenance record keeps changing (other jobs are claiming it)")

    def holds_claim(self) -> bool:
        """Whether the prefix's record still holds this sink's claim (one small read); always for a sink that
        claimed nothing."""
        if self.claim_token is None:
            return True
        held = self._record()
        return held is not None and str(held.get("claim", "")) == self.claim_token

    def fence(self) -> None:
        """ClaimLost unless the prefix still holds this sink's claim: what every write of a claimed sink checks."""
        if not self.holds_claim():
            raise ClaimLost(f"{self.uri} was taken over by another job (its provenance record is no longer this "
                            f"job's claim); nothing more is written there")

    def _record_uri(self) -> str:
        return self._path("_state", "provenance.json")

    def _record(self) -> dict | None:
        """The prefix's provenance record; None when there is none."""
        try:
            return json.loads(self._get(self._record_uri()))
        except FileNotFoundError:
            return None

    def _holds_results(self) -> bool:
        return bool(self.done_ids() or retrying(lambda: list_names(self._path("masklets"), self.storage_options),
                                                "listing masklets", self.retry_s))

    def _identity_fields(self, decoder: str | None) -> dict:
        """What the record adds to the job's provenance to identify a video prefix: masklet format and decoder."""
        return {"format": self.fmt, **({"decoder": decoder} if decoder is not None else {})}

    def _identity_of(self, record: dict) -> PrefixIdentity:
        """The identity of the prefix's ``record``. One of an earlier release names no format or decoder: the format
        is that of the masklet files there (one listing), the decoder the one its resolved config names, if any."""
        if "format" not in record:
            names = retrying(lambda: list_names(self._path("masklets"), self.storage_options), "listing masklets",
                             self.retry_s)
            held = {f for f, ext in FORMATS.items() if any(n.endswith(ext) for n in names)}
            record = {**record, "format": held.pop() if len(held) == 1 else None}
        if "decoder" not in record:
            config = record.get("config") if isinstance(record.get("config"), dict) else {}
            record = {**record, "decoder": (config.get("data") or {}).get("decoder")}
        return PrefixIdentity.of(record)

    def _refusal(self, changed: dict) -> str:
        """One line on what the prefix holds and what this job would write."""
        if "format" in changed and len(changed) == 1:
            there, now = changed["format"]
            return (f"{self.uri} holds {there} masklets, output.format={now} now (output.format={there} resumes "
                    f"there)")
        if "decoder" in changed and len(changed) == 1:
            there, now = changed["decoder"]
            return (f"{self.uri} holds masklets of videos decoded by {there}, data.decoder={now} now "
                    f"(data.decoder={there} resumes there)")
        reason = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in changed.items())
        return f"{self.uri} holds results of another model/checkpoint/options ({reason})"

    def _clear(self) -> None:
        """Delete the provenance record first (a job writing under it is fenced out at once), then masklets, state,
        end-of-job files and what the tools derived from them (``DERIVED``) under this prefix (an explicit
        overwrite); anything else there is left alone."""
        fs, path = filesystem(self._record_uri(), self.storage_options)
        with contextlib.suppress(FileNotFoundError):
            retrying(lambda: fs.rm_file(path), f"removing {self._record_uri()}", self.retry_s)
        for name, size in list_sizes(self.uri, self.storage_options).items():
            if name in ("masklets", "_state") or _END_OF_JOB_FILE.match(name) or DERIVED.match(name):
                fs, path = filesystem(self._path(name), self.storage_options)
                if size is None:
                    fs.rm(path, recursive=True)
                else:
                    fs.rm_file(path)


def make_sink(output_uri: str, fmt: str, storage_options: dict | None, retry_s: float,
              claim: str | None = None) -> Sink:
    """The sink for ``output.uri`` / ``output.format`` / ``output.storage_options`` / ``output.retry_s`` (their
    defaults: pipeline.specs.OutputSpec), fenced by ``claim`` (see ``Sink``)."""
    return Sink(output_uri, fmt, storage_options, retry_s, claim)
