"""The image job's output prefix: the prefix of ``pipeline.io.prefix.Sink`` (markers, provenance, summary) with a
part file per task in place of a masklet file per video, and the COCO file the parts are merged into.

Layout::

    {output}/_state/parts/{task}.json           the task's images, annotations and failed images (whole-object put)
    {output}/_state/done/{task}.json            written only after the part is complete (its digest: resume)
    {output}/_state/failed/{task}.json          a task that failed after its retries
    {output}/annotations.json                   COCO instances of every image (annotations-{k}-of-{n}.json per
                                                shard of a sharded job), written once every task of it is done
    {output}/config.yaml, summary.json, _SUCCESS    as for videos
"""

from __future__ import annotations

import contextlib
import json

from pipeline.io.coco import instances, instances_bytes
from pipeline.io.prefix import Sink
from pipeline.io.storage import filesystem, list_names, retrying


def annotations_name(shard: tuple[int, int]) -> str:
    """``annotations.json``, or ``annotations-{k}-of-{n}.json`` for shard k of a job sharded n ways (n > 1)."""
    k, n = shard
    return f"annotations-{k}-of-{n}.json" if n > 1 else "annotations.json"


class ImageSink(Sink):
    """Part files, markers and the COCO output of one prefix; transient storage errors retried as ``Sink`` does."""

    def __init__(self, output_uri: str, storage_options: dict | None, retry_s: float,
                 claim: str | None = None) -> None:
        super().__init__(output_uri, "sav_json", storage_options, retry_s, claim)

    def masklet_uri(self, video_id: str) -> str:
        """URI of a task's part file (what its done marker points at)."""
        return self._path("_state", "parts", self._checked(video_id) + ".json")

    def write_part(self, task_key: str, part: dict) -> None:
        """The part of a task: ``{"images": [...], "annotations": [...], "failed": {image_id: reason}}`` (fenced)."""
        self.fence()
        self._put(self.masklet_uri(task_key), json.dumps(part, separators=(",", ":")).encode())

    def read_part(self, task_key: str) -> dict:
        """A task's part, as written."""
        return json.loads(self._get(self.masklet_uri(task_key)))

    def write_annotations(self, parts: list[dict], shard: tuple[int, int], info: dict) -> str:
        """Merge parts into the COCO instances file of ``shard`` (fenced); returns its URI."""
        doc = instances((img for p in parts for img in p["images"]), (a for p in parts for a in p["annotations"]),
                        info)
        uri = self._path(annotations_name(shard))
        self.fence()
        self._put(uri, instances_bytes(doc))
        return uri

    def _identity_fields(self, decoder: str | None) -> dict:
        """Nothing: an image prefix has no masklet format and no video decoder."""
        return {}

    def _clear(self) -> None:
        """What ``Sink`` clears, and the COCO files."""
        super()._clear()
        names = retrying(lambda: list_names(self.uri, self.storage_options), f"listing {self.uri}", self.retry_s)
        for name in names:
            if name.startswith("annotations") and name.endswith(".json"):
                fs, path = filesystem(self._path(name), self.storage_options)
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(path)
