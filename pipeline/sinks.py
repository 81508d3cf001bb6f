"""Where masklets go: per-video files plus state markers under one output prefix (any fsspec URI).

Layout::

    {output}/masklets/{video_id}.json | .parquet    the masklets (whole-object put)
    {output}/_state/done/{video_id}.json            written only after the masklet file is complete
    {output}/_state/failed/{video_id}.json          reason of a video that failed after its retries
    {output}/_state/provenance.json                 model + checkpoint identity of the results in this prefix
    {output}/config.yaml, summary.json, _SUCCESS    at the end of a job (_SUCCESS last; per shard when sharded)

Every write is a single put of the whole object, so a reader never sees a partial file and no rename is needed;
a task that runs twice rewrites the same keys. Resume = ``done_ids()`` (one listing).
"""

from __future__ import annotations

import json
import re
import time

from pipeline.masklets import Masklets, masklets_from_bytes, masklets_to_bytes
from pipeline.provenance import ProvenanceError, provenance_identity
from pipeline.storage import exists, filesystem, join_uri, list_names, read_bytes, write_bytes

FORMATS = {"sav_json": ".json", "parquet": ".parquet"}
_VIDEO_ID = re.compile(r"^[A-Za-z0-9._-]+$")
_END_OF_JOB_FILE = re.compile(r"^(summary(-\d+-of-\d+)?\.json|_SUCCESS(-\d+-of-\d+)?|config(-\d+-of-\d+)?\.yaml)$")


def _json(data: dict) -> bytes:
    return json.dumps(data, indent=None, separators=(",", ":"), sort_keys=True).encode()


class Sink:
    """Masklet files and state markers of one output prefix."""

    def __init__(self, output_uri: str, fmt: str = "sav_json", storage_options: dict | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; expected one of {sorted(FORMATS)}")
        self.uri = output_uri.rstrip("/")
        self.fmt = fmt
        self.storage_options = storage_options

    def _path(self, *parts: str) -> str:
        return join_uri(self.uri, *parts)

    @staticmethod
    def _checked(video_id: str) -> str:
        if not _VIDEO_ID.match(video_id) or video_id in (".", ".."):
            raise ValueError(f"video_id {video_id!r} is not usable in an output key ([A-Za-z0-9._-]+)")
        return video_id

    def masklet_uri(self, video_id: str) -> str:
        """URI of the masklet file of ``video_id``."""
        return self._path("masklets", self._checked(video_id) + FORMATS[self.fmt])

    def write(self, m: Masklets) -> str:
        """Write the masklets of one video (one put); returns its URI."""
        uri = self.masklet_uri(m.video_id)
        write_bytes(uri, masklets_to_bytes(m, self.fmt), self.storage_options)
        return uri

    def read(self, video_id: str) -> Masklets:
        """The masklets written for ``video_id``."""
        return masklets_from_bytes(read_bytes(self.masklet_uri(video_id), self.storage_options), self.fmt)

    def mark_done(self, video_id: str, record: dict) -> None:
        """Done marker (call after ``write``); clears a failed marker left by an earlier run."""
        body = {**record, "video_id": video_id, "masklets": self.masklet_uri(video_id), "time": time.time()}
        write_bytes(self._path("_state", "done", self._checked(video_id) + ".json"), _json(body),
                    self.storage_options)
        fs, path = filesystem(self._path("_state", "failed", video_id + ".json"), self.storage_options)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    def mark_failed(self, video_id: str, reason: str, record: dict | None = None) -> None:
        """Failed marker with the reason (the video is not marked done, so a re-run retries it)."""
        body = {**(record or {}), "video_id": video_id, "reason": reason, "time": time.time()}
        write_bytes(self._path("_state", "failed", self._checked(video_id) + ".json"), _json(body),
                    self.storage_options)

    def _ids(self, state: str) -> set[str]:
        names = list_names(self._path("_state", state), self.storage_options)
        return {n[: -len(".json")] for n in names if n.endswith(".json")}

    def done_ids(self) -> set[str]:
        """Videos with a done marker (one listing)."""
        return self._ids("done")

    def failed_ids(self) -> set[str]:
        """Videos with a failed marker (one listing)."""
        return self._ids("failed")

    def read_record(self, video_id: str, state: str = "done") -> dict:
        """The done (or failed) record of a video."""
        return json.loads(read_bytes(self._path("_state", state, self._checked(video_id) + ".json"),
                                     self.storage_options))

    def write_summary(self, summary: dict, resolved_config_yaml: str, shard: tuple[int, int] | None = None) -> None:
        """config.yaml and summary.json, then the _SUCCESS marker last.

        A shard ``(k, n)`` of a sharded job (n > 1) writes ``config-{k}-of-{n}.yaml``, ``summary-{k}-of-{n}.json``
        and ``_SUCCESS-{k}-of-{n}`` so that shards sharing one prefix do not overwrite each other.
        """
        tag = f"-{shard[0]}-of-{shard[1]}" if shard is not None and shard[1] > 1 else ""
        write_bytes(self._path(f"config{tag}.yaml"), resolved_config_yaml.encode(), self.storage_options)
        write_bytes(self._path(f"summary{tag}.json"), json.dumps(summary, indent=2, sort_keys=True).encode(),
                    self.storage_options)
        write_bytes(self._path(f"_SUCCESS{tag}"), b"", self.storage_options)

    def finished(self, shard: tuple[int, int]) -> bool:
        """Whether a run of ``shard`` ``(k, n)`` ended with its summary (its ``_SUCCESS`` marker exists)."""
        k, n = shard
        return exists(self._path(f"_SUCCESS-{k}-of-{n}" if n > 1 else "_SUCCESS"), self.storage_options)

    def check_provenance(self, prov: dict, overwrite: bool = False) -> None:
        """Claim the prefix for ``prov`` (see ``provenance_identity`` for what must match).

        Same identity as recorded → resume. Different, or results without a record → refuse with
        ProvenanceError unless ``overwrite``, which deletes the old results and state before recording ``prov``.
        """
        new_id = provenance_identity(prov)
        record_uri = self._path("_state", "provenance.json")
        if exists(record_uri, self.storage_options):
            old_id = provenance_identity(json.loads(read_bytes(record_uri, self.storage_options)))
            changed = {k: (old_id.get(k), new_id.get(k)) for k in sorted(set(old_id) | set(new_id))
                       if old_id.get(k) != new_id.get(k)}
            if not changed:
                return
            reason = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in changed.items())
        elif self.done_ids() or list_names(self._path("masklets"), self.storage_options):
            reason = "results without a provenance record"
        else:
            write_bytes(record_uri, _json(prov), self.storage_options)
            return
        if not overwrite:
            raise ProvenanceError(f"{self.uri} holds results of another model/checkpoint ({reason}); "
                                  f"choose another output prefix or set overwrite")
        self._clear()
        write_bytes(record_uri, _json(prov), self.storage_options)

    def _clear(self) -> None:
        """Delete masklets, state and end-of-job files of this prefix (used by an explicit overwrite)."""
        for part in ("masklets", "_state"):
            fs, path = filesystem(self._path(part), self.storage_options)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        for name in list_names(self.uri, self.storage_options):
            if _END_OF_JOB_FILE.match(name):
                fs, path = filesystem(self._path(name), self.storage_options)
                fs.rm_file(path)


def make_sink(output_uri: str, fmt: str = "sav_json", storage_options: dict | None = None) -> Sink:
    """The sink for ``output.uri`` / ``output.format``."""
    return Sink(output_uri, fmt, storage_options)
