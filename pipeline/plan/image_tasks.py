"""Image tasks: a shard of many images (not one per Ray call), with the prompts of all their objects.

The manifest's rows are sorted by ``(image_id, obj_id)`` and cut into runs of ``images_per_task`` images; task k is
keyed ``images-{k:06d}``. Each task holds its own compact Arrow slice of the manifest (so a task sent to a worker
carries only its rows) and a digest of its content (image ids, URIs, prompts, categories), to which the job adds
what produces the masks (model identity, options): a re-run skips a task whose done marker carries the same digest
and recomputes one whose prompts changed. The cut is by position, so adding images to a manifest shifts the tasks
after them (they recompute); the same manifest always gives the same tasks.

The pool schedules these as it does video tasks: ``video_id`` is the task's key (what the pool names in its logs,
markers and retries), ``num_objects`` and ``cost`` size it, ``with_smaller_batches`` halves the images per encoder
batch after an out-of-memory failure.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.rle import decode_rle
from pipeline.plan.tasks import _resolve_uri
from sam2core.image_predictor import ImagePrompt

_COLUMNS = ("image_id", "image_uri", "file_name", "obj_id", "points", "point_labels", "box", "mask", "category_id")


@dataclass(frozen=True)
class ImageObject:
    """One manifest row: the prompts of one object of an image (pixels of the original image)."""

    obj_id: int
    points: list[list[float]] | None
    point_labels: list[int] | None
    box: list[float] | None
    mask: dict | None  # COCO RLE
    category_id: int | None

    def prompt(self) -> ImagePrompt:
        """The sam2core prompt (mask decoded)."""
        return ImagePrompt(None if self.points is None else np.asarray(self.points, dtype=np.float32),
                           None if self.point_labels is None else np.asarray(self.point_labels, dtype=np.int32),
                           None if self.box is None else np.asarray(self.box, dtype=np.float32),
                           None if self.mask is None else decode_rle(self.mask))


@dataclass(frozen=True)
class ImageItem:
    """One image of a task and its objects (none with ``prompts=auto``)."""

    image_id: str
    uri: str  # resolved (absolute)
    file_name: str  # the manifest's image_uri, as written (what the COCO output names the image by)
    objects: tuple[ImageObject, ...]


@dataclass(frozen=True)
class ImageTask:
    """A run of images and their prompts; see the module for how it is cut, keyed and digested."""

    key: str
    rows: pa.Table
    num_images: int
    num_objects: int
    content: str  # sha256 of the rows
    auto: bool = False
    digest: str = ""  # content + what produces the masks (``with_digest``)
    image_batch: int | None = None  # images per encoder batch, after an out-of-memory failure

    @property
    def video_id(self) -> str:
        """The pool's name for a task (it schedules image tasks as it does videos)."""
        return self.key

    @property
    def cost(self) -> float:
        """Work in the task: an encoder pass per image and a decoder pass per object."""
        return float(self.num_images + self.num_objects)

    @property
    def file_size(self) -> float:
        """What the pool fits seconds per (``pipeline.driver.scheduling.Task``; a video's file bytes): the task's
        cost, as it has no one file."""
        return self.cost

    def with_smaller_batches(self, used: int | None = None) -> ImageTask:
        """Half the images per encoder batch (of ``used``, what the failed attempt batched, else of the cap)."""
        current = used or self.image_batch or self.num_images
        return replace(self, image_batch=max(1, current // 2))

    def with_digest(self, produced_by: dict) -> ImageTask:
        """The task with its digest: its content and ``produced_by`` (model identity and options)."""
        blob = json.dumps({"content": self.content, "produced_by": produced_by}, sort_keys=True,
                          separators=(",", ":"), default=str)
        return replace(self, digest=hashlib.sha256(blob.encode()).hexdigest())

    def images(self) -> list[ImageItem]:
        """The task's images in order, each with its objects (built on the worker, from the rows)."""
        cols = {c: self.rows[c].to_pylist() if c in self.rows.column_names else [None] * self.rows.num_rows
                for c in _COLUMNS}
        items: list[ImageItem] = []
        objects: list[ImageObject] = []
        for i in range(self.rows.num_rows):
            if self.auto:
                items.append(ImageItem(cols["image_id"][i], cols["image_uri"][i], cols["file_name"][i], ()))
                continue
            objects.append(ImageObject(cols["obj_id"][i], cols["points"][i], cols["point_labels"][i],
                                       cols["box"][i], cols["mask"][i], cols["category_id"][i]))
            last = i + 1 == self.rows.num_rows or cols["image_id"][i + 1] != cols["image_id"][i]
            if last:
                items.append(ImageItem(cols["image_id"][i], cols["image_uri"][i], cols["file_name"][i],
                                       tuple(objects)))
                objects = []
        return items


def plan_image_tasks(table: pa.Table, data_root: str | None, images_per_task: int, mode: str) -> list[ImageTask]:
    """Validated rows → tasks of ``images_per_task`` images (relative URIs resolved under ``data_root``)."""
    if images_per_task < 1:
        raise ValueError(f"images_per_task must be >= 1, got {images_per_task}")
    auto = mode == "auto"
    keep = [c for c in _COLUMNS if c in table.column_names and not (auto and c not in ("image_id", "image_uri"))]
    table = table.select(keep)
    table = table.add_column(2, "file_name", table["image_uri"])
    order = [("image_id", "ascending")] + ([] if auto else [("obj_id", "ascending")])
    table = table.sort_by(order)
    resolved = {u: _resolve_uri(u, data_root) for u in pc.unique(table["image_uri"]).to_pylist()}
    table = table.set_column(table.column_names.index("image_uri"), "image_uri",
                             pa.array([resolved[u] for u in table["image_uri"].to_pylist()], pa.string()))
    ids = table["image_id"].to_pylist()
    if not ids:
        return []
    starts = [0] + [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
    bounds = starts[::images_per_task] + [len(ids)]
    tasks = []
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        rows = table.take(pa.array(np.arange(a, b)))
        num_images = min(images_per_task, len(starts) - k * images_per_task)
        content = hashlib.sha256(json.dumps(rows.to_pylist(), sort_keys=True, separators=(",", ":"),
                                            default=str).encode()).hexdigest()
        tasks.append(ImageTask(f"images-{k:06d}", rows, num_images, 0 if auto else b - a, content, auto))
    return tasks
