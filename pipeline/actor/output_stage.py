"""The worker's output stage: low-resolution logits in, COCO RLE strings out, off the tracking thread.

The session yields each frame's low-resolution logits (``[N, 1, h, w]``, on the model's device) and goes on to the
next frame. Here, on the same device but another thread (and, on CUDA, another stream):

1. ``VideoResolution.boxes``: each object's box of video pixels that can be positive. Bilinear upsampling is a convex
   combination of the (up to) four low-resolution taps of a pixel, so a pixel whose taps are all ≤ 0 is ≤ 0: only
   the pixels whose taps reach the box of positive low-resolution logits are computed; the runs outside are zeros.
2. ``VideoResolution.crop``: those pixels, upsampled (bilinear, ``align_corners=False``) and thresholded, and their
   run boundaries (``pipeline.io.rle``). Only the boundary flags leave the device.
3. A small host pool turns boundaries into pycocotools' ``counts`` strings and feeds the ``MaskletBuilder``.

Each frame costs the device thread one wait: frame t's boxes and frame t-1's boundary flags come back together.
Queues are bounded (back-pressure on the tracking loop instead of memory), and an error anywhere in the stage
fails the video with its reason: ``put`` and ``close`` raise it, nothing waits forever.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.io.masklets import MaskletBuilder
from pipeline.io.rle import boundaries_from_flags, coco_rles, crop_boundaries
from sam2core.video.postprocess import non_overlap
from sam2core.video.stage import ConsumerStage

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 in video pixels (end exclusive)


class OutputStageError(RuntimeError):
    """The output stage failed; the message carries the original error."""


@dataclass(frozen=True)
class _Taps:
    """Bilinear source taps of one axis (``align_corners=False``): output i reads ``lo[i]`` and ``hi[i]``."""

    lo: torch.Tensor  # int64 [n_out]
    hi: torch.Tensor  # int64 [n_out]
    w_lo: torch.Tensor  # float32 [n_out]
    w_hi: torch.Tensor  # float32 [n_out]


def _taps(n_in: int, n_out: int, device: torch.device) -> _Taps:
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    w_hi = src - lo.float()
    return _Taps(lo.to(device), hi.to(device), (1 - w_hi).to(device), w_hi.to(device))


class VideoResolution:
    """Low-resolution logits ``[h, w]`` → video-resolution logits ``[H, W]``, inside boxes only."""

    def __init__(self, low_size: tuple[int, int], video_size: tuple[int, int], device: torch.device) -> None:
        (h, w), (self.height, self.width) = low_size, video_size
        self.rows = _taps(h, self.height, device)
        self.cols = _taps(w, self.width, device)

    def boxes(self, low_res: torch.Tensor) -> torch.Tensor:
        """``[N, 4]`` int64 boxes (y0, x0, y1, x1) of the video pixels each object's logits ``[N, h, w]`` can make
        positive; ``(0, 0, 0, 0)`` for an object with no positive logit."""
        positive = low_res > 0
        rows, cols = positive.any(dim=2), positive.any(dim=1)
        present = rows.any(dim=1)
        y0, y1 = self._span(rows, self.rows)
        x0, x1 = self._span(cols, self.cols)
        boxes = torch.stack([y0, x0, y1, x1], dim=1)
        return torch.where(present[:, None], boxes, torch.zeros_like(boxes))

    @staticmethod
    def _span(any_: torch.Tensor, taps: _Taps) -> tuple[torch.Tensor, torch.Tensor]:
        n = any_.shape[1]
        first = any_.int().argmax(dim=1)
        last = n - 1 - any_.flip(1).int().argmax(dim=1)
        start = torch.searchsorted(taps.hi, first.contiguous())  # first output whose upper tap reaches ``first``
        end = torch.searchsorted(taps.lo, last.contiguous(), right=True)  # first output past ``last``
        return start, end

    def logits(self, low_res: torch.Tensor, box: Box) -> torch.Tensor:
        """Video-resolution logits of ``box`` from low-resolution logits ``[..., h, w]`` (leading dims kept)."""
        y0, x0, y1, x1 = box
        r, c = self.rows, self.cols
        top = low_res.index_select(-2, r.lo[y0:y1])
        bottom = low_res.index_select(-2, r.hi[y0:y1])
        wl, wh = c.w_lo[x0:x1], c.w_hi[x0:x1]
        top = top.index_select(-1, c.lo[x0:x1]) * wl + top.index_select(-1, c.hi[x0:x1]) * wh
        bottom = bottom.index_select(-1, c.lo[x0:x1]) * wl + bottom.index_select(-1, c.hi[x0:x1]) * wh
        return top * r.w_lo[y0:y1, None] + bottom * r.w_hi[y0:y1, None]

    def masks(self, low_res: torch.Tensor, boxes: Sequence[Box], non_overlap_masks: bool
              ) -> tuple[list[torch.Tensor], list[Box]]:
        """Boolean crops of every object (``[N, h, w]`` logits) and their boxes. With ``non_overlap_masks`` every
        object is computed over the union of the boxes, where the top object of each pixel is kept."""
        if not non_overlap_masks or len(boxes) < 2:
            return [self.logits(low_res[i], b) > 0 for i, b in enumerate(boxes)], list(boxes)
        present = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
        if not present:
            return [low_res.new_zeros((0, 0), dtype=torch.bool)] * len(boxes), list(boxes)
        union = (min(b[0] for b in present), min(b[1] for b in present),
                 max(b[2] for b in present), max(b[3] for b in present))
        crops = non_overlap(self.logits(low_res, union)) > 0
        return list(crops), [union] * len(boxes)


@dataclass
class _Frame:
    frame_idx: int
    low_res: torch.Tensor  # [N, h, w] float32 on the model device
    scores: torch.Tensor  # [N] on the model device
    ready: torch.cuda.Event | None  # recorded on the tracking stream after the logits were made
    boxes: torch.Tensor | None = None  # host [N, 4], filled by the device thread
    host_scores: torch.Tensor | None = None


class OutputStage:
    """Frames of one video from the tracking loop to ``builder``: a device thread (boxes, crops, boundary flags;
    one wait per frame) and ``threads`` host threads (strings), at most ``depth`` frames queued at each step."""

    def __init__(self, builder: MaskletBuilder, device: torch.device, low_size: tuple[int, int],
                 non_overlap_masks: bool, threads: int, depth: int) -> None:
        self.builder = builder
        self.device = device
        self.resolution = VideoResolution(low_size, (builder.height, builder.width), device)
        self.non_overlap_masks = non_overlap_masks
        self.depth = depth
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="rle")
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.frames: ConsumerStage[_Frame] = ConsumerStage(self._run, depth, "output-stage")

    def put(self, frame_idx: int, low_res: torch.Tensor, scores: torch.Tensor) -> None:
        """Queue one frame's logits ``[N, 1, h, w]`` (or ``[N, h, w]``) and scores ``[N]``; blocks while the stage
        is ``depth`` frames behind, raises OutputStageError once the stage has failed."""
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record()
            low_res.record_stream(self.stream)
            scores.record_stream(self.stream)
        item = _Frame(frame_idx, low_res.reshape(low_res.shape[0], *low_res.shape[-2:]), scores.reshape(-1), ready)
        with self._failure():
            self.frames.put(item)

    def close(self) -> None:
        """Wait until every queued frame reached the builder; raises OutputStageError if the stage failed."""
        try:
            with self._failure():
                self.frames.finish()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop without waiting for queued frames (the video failed elsewhere)."""
        self.frames.abort()
        self.pool.shutdown(wait=True, cancel_futures=True)

    @contextlib.contextmanager
    def _failure(self) -> Iterator[None]:
        """The device thread's failure, re-raised by ``frames``, as an OutputStageError naming it."""
        try:
            yield
        except BaseException as exc:
            if exc is not self.frames.error:
                raise
            raise OutputStageError(f"mask output failed: {type(exc).__name__}: {exc}") from exc

    def _run(self, frames: Iterator[_Frame]) -> None:
        """The device thread: each queued frame's boxes and the previous frame's crops, then their strings."""
        strings: deque[tuple[int, Future]] = deque()
        try:
            side = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
            with torch.inference_mode(), side:
                pending: _Frame | None = None
                for item in frames:
                    flags = self._step(item, pending)
                    if flags is not None:
                        strings.append((pending.frame_idx, self.pool.submit(self._encode, pending, *flags)))
                    pending = item
                    self._collect(strings, keep=self.depth)
                if pending is not None and not self.frames.aborted:
                    flags = self._step(None, pending)
                    strings.append((pending.frame_idx, self.pool.submit(self._encode, pending, *flags)))
                self._collect(strings, keep=0)
        except BaseException:
            for _, future in strings:
                future.cancel()
            raise

    def _step(self, item: _Frame | None, pending: _Frame | None) -> tuple[np.ndarray, list[int], list[Box]] | None:
        """Launch ``item``'s boxes and ``pending``'s crops on the device, wait once, return ``pending``'s flags."""
        if item is not None:
            if item.ready is not None:
                torch.cuda.current_stream().wait_event(item.ready)
            item.boxes = _to_host(self.resolution.boxes(item.low_res))
            item.host_scores = _to_host(item.scores.float())
        flags_host = sizes = boxes = None
        if pending is not None:
            boxes = [tuple(int(v) for v in b) for b in pending.boxes.tolist()]
            crops, boxes = self.resolution.masks(pending.low_res, boxes, self.non_overlap_masks)
            flags, sizes = crop_boundaries(crops, boxes, self.builder.height, self.builder.width)
            flags_host = _to_host(flags)
        if self.stream is not None:
            self.stream.synchronize()
        if pending is None:
            return None
        return flags_host.numpy(), sizes, boxes

    def _encode(self, frame: _Frame, flags: np.ndarray, sizes: list[int], boxes: list[Box]) -> tuple[list, list, list]:
        b = boundaries_from_flags(flags, sizes, boxes, self.builder.height, self.builder.width)
        present = (np.diff(b.offsets) > 0).tolist()
        return coco_rles(b), frame.host_scores.tolist(), present

    def _collect(self, strings: deque[tuple[int, Future]], keep: int) -> None:
        """Hand finished frames to the builder in order, waiting while more than ``keep`` are in flight."""
        while strings and (len(strings) > keep or strings[0][1].done()):
            frame_idx, future = strings.popleft()
            rles, scores, present = future.result()
            self.builder.add_rles(frame_idx, rles, scores, present)


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A host copy of ``t``: pinned and non-blocking from CUDA (valid after the stream's next synchronisation)."""
    if t.device.type != "cuda":
        return t
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t, non_blocking=True)
    return out
