"""Where masklets go: per-video files plus state markers under one output prefix (any fsspec URI).

Layout::

    {output}/masklets/{video_id}.json | .parquet    the masklets (whole-object put)
    {output}/_state/done/{video_id}.json            written only after the masklet file is complete
    {output}/_state/failed/{video_id}.json          reason of a video that failed after its retries
    {output}/_state/provenance.json                 model + checkpoint identity of the results in this prefix
    {output}/config.yaml, summary.json, _SUCCESS    at the end of a job (_SUCCESS last; per shard when sharded)

Every write is atomic (a whole-object put, or a local temporary file renamed), so a reader never sees a partial
file; a task that runs twice rewrites the same keys. Resume = ``done_records()``: one listing, then the markers; a
marker that does not parse counts as not done, and each one carries the digest of what produced it. The markers'
bodies are ``pipeline.records.DoneMarker`` and ``FailedMarker``; the prefix's identity is ``PrefixIdentity``.
"""

from __future__ import annotations

import contextlib
import json
import re
import time

from pipeline.io.keys import VIDEO_ID_RULE, usable_video_id
from pipeline.io.masklets import Masklets, masklets_from_bytes, masklets_to_bytes
from pipeline.io.storage import (exists, filesystem, join_uri, list_names, list_sizes, read_bytes, retrying,
                                 write_bytes)
from pipeline.records import DoneMarker, FailedMarker, PrefixIdentity, ProvenanceError, WorkerResult

FORMATS = {"sav_json": ".json", "parquet": ".parquet"}
_END_OF_JOB_FILE = re.compile(r"^(summary(-\d+-of-\d+)?\.json|_SUCCESS(-\d+-of-\d+)?|config(-\d+-of-\d+)?\.yaml)$")
# What the tools derive from the masklets under the prefix by default (jobs.report, jobs.render, jobs.export,
# jobs.evaluate): an overwrite removes them with the masklets, so no report or export of the old model survives.
DERIVED = re.compile(r"^(report|render|export_[a-z_]+|eval_objects\.csv|eval_videos\.csv)$")


def _json(data: dict) -> bytes:
    return json.dumps(data, indent=None, separators=(",", ":"), sort_keys=True).encode()


class Sink:
    """Masklet files and state markers of one output prefix; every call retries transient storage errors for up
    to ``retry_s`` seconds (``pipeline.storage.retrying``) before it raises."""

    def __init__(self, output_uri: str, fmt: str, storage_options: dict | None, retry_s: float) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; expected one of {sorted(FORMATS)}")
        self.uri = output_uri.rstrip("/")
        self.fmt = fmt
        self.storage_options = storage_options
        self.retry_s = retry_s

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
        """Write the masklets of one video (one put); returns its URI."""
        uri = self.masklet_uri(m.video_id)
        self._put(uri, masklets_to_bytes(m, self.fmt))
        return uri

    def read(self, video_id: str) -> Masklets:
        """The masklets written for ``video_id``."""
        return masklets_from_bytes(self._get(self.masklet_uri(video_id)), self.fmt)

    def mark_done(self, result: WorkerResult) -> None:
        """Done marker of a done ``result`` (call after ``write``); clears a failed marker left by an earlier run."""
        video_id = result.video_id
        marker = DoneMarker(video_id, result.digest, self.masklet_uri(video_id), result.frames, result.objects,
                            result.seconds, time.time(), result.worker)
        self._put(self._path("_state", "done", self._checked(video_id) + ".json"), _json(marker.to_json()))
        fs, path = filesystem(self._path("_state", "failed", video_id + ".json"), self.storage_options)

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)

        retrying(remove, f"removing {path}", self.retry_s)

    def mark_failed(self, result: WorkerResult) -> None:
        """Failed marker of a final failed ``result``, with its reason (the video is not marked done, so a re-run
        retries it)."""
        marker = FailedMarker.of(result, time.time())
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
        does not parse (a truncated write): such a video counts as not done."""
        ids = sorted(self.done_ids())
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

    def check_provenance(self, prov: dict, overwrite: bool = False) -> None:
        """Claim the prefix for ``prov`` (``PrefixIdentity`` is what must match).

        Same identity as recorded → resume. Different, or results without a record → refuse with
        ProvenanceError unless ``overwrite``, which deletes the old results and state before recording ``prov``.
        """
        new_id = PrefixIdentity.of(prov)
        record_uri = self._path("_state", "provenance.json")
        so = self.storage_options
        if retrying(lambda: exists(record_uri, so), f"checking {record_uri}", self.retry_s):
            changed = PrefixIdentity.of(json.loads(self._get(record_uri))).differences(new_id)
            if not changed:
                return
            reason = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in changed.items())
        elif self.done_ids() or retrying(lambda: list_names(self._path("masklets"), so), "listing masklets",
                                         self.retry_s):
            reason = "results without a provenance record"
        else:
            self._put(record_uri, _json(prov))
            return
        if not overwrite:
            raise ProvenanceError(f"{self.uri} holds results of another model/checkpoint/options ({reason}); "
                                  f"choose another output prefix or set overwrite")
        self._clear()
        self._put(record_uri, _json(prov))

    def _clear(self) -> None:
        """Delete masklets, state, end-of-job files and what the tools derived from them (``DERIVED``) under this
        prefix (an explicit overwrite); anything else there is left alone."""
        for name, size in list_sizes(self.uri, self.storage_options).items():
            if name in ("masklets", "_state") or _END_OF_JOB_FILE.match(name) or DERIVED.match(name):
                fs, path = filesystem(self._path(name), self.storage_options)
                if size is None:
                    fs.rm(path, recursive=True)
                else:
                    fs.rm_file(path)


def make_sink(output_uri: str, fmt: str, storage_options: dict | None, retry_s: float) -> Sink:
    """The sink for ``output.uri`` / ``output.format`` / ``output.storage_options`` / ``output.retry_s`` (their
    defaults: pipeline.specs.OutputSpec)."""
    return Sink(output_uri, fmt, storage_options, retry_s)
