"""Frames in, image features out: a frame-source protocol, an in-memory source, and a look-ahead feature stream.

The engine never holds the whole video. It asks a ``FrameSource`` for the frames of one propagation pass in order;
a background thread decodes a few frames ahead (``prefetch``) while the model works, and the consumer side turns
uint8 frames into model inputs on the model's device and encodes ``encoder_batch`` frames per image-encoder call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class FrameSource(Protocol):
    """Random-access video: ``iter_frames`` yields uint8 HxWx3 frames (numpy or torch) in the order asked."""

    num_frames: int
    height: int
    width: int

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]: ...


class ArrayFrameSource:
    """A video already in memory (notebooks, tests): an array [N,H,W,3] or a list of equally sized HxWx3 frames."""

    def __init__(self, frames: np.ndarray | Sequence[np.ndarray]) -> None:
        if len(frames) == 0:
            raise ValueError("ArrayFrameSource needs at least one frame")
        first = np.asarray(frames[0])
        if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 HxWx3, got {first.dtype} {first.shape}")
        for i, frame in enumerate(frames):
            if np.shape(frame) != first.shape:
                raise ValueError(f"frame {i} has shape {np.shape(frame)}, frame 0 has {first.shape}")
        self._frames = frames
        self.num_frames = len(frames)
        self.height, self.width = int(first.shape[0]), int(first.shape[1])

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        for i in indices:
            yield np.asarray(self._frames[i])


_END = object()


def host_frame(frame: np.ndarray | torch.Tensor, frame_idx: int, source: FrameSource, pin: bool) -> torch.Tensor:
    """Check one decoded frame against the source's size and make it a uint8 [H,W,3] CPU tensor (pinned for CUDA)."""
    tensor = torch.as_tensor(frame)
    expected = (source.height, source.width, 3)
    if tensor.dtype != torch.uint8 or tuple(tensor.shape) != expected:
        raise ValueError(f"frame {frame_idx}: expected uint8 {expected}, got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor.pin_memory() if pin and tensor.device.type == "cpu" else tensor


def to_device(frames: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Stack host frames into a [B,H,W,3] uint8 batch on ``device`` (asynchronous copy from pinned memory)."""
    batch = frames[0].unsqueeze(0) if len(frames) == 1 else torch.stack(frames)
    return batch.to(device, non_blocking=True)


class _Prefetcher:
    """Decodes ``indices`` from ``source`` on a daemon thread into a bounded queue (at most ``depth`` frames),
    already checked and (for CUDA) pinned."""

    def __init__(self, source: FrameSource, indices: Sequence[int], depth: int, pin: bool) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source, list(indices), pin), daemon=True)
        self._thread.start()

    def _run(self, source: FrameSource, indices: list[int], pin: bool) -> None:
        try:
            for frame_idx, frame in zip(indices, source.iter_frames(indices)):
                if not self._put(host_frame(frame, frame_idx, source, pin)):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> torch.Tensor:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is _END:
            raise ValueError("the frame source yielded fewer frames than asked for")
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


class FeatureStream:
    """Image features for a sequence of frames, encoded ``batch`` frames per call, frames decoded ahead on a thread.

    ``encode`` maps a [B,H,W,3] uint8 tensor on the model device to batched features supporting ``.index(i)``.
    Iterating yields ``(frame_idx, features_of_that_frame)``; ``close`` stops the decoder thread early.
    """

    def __init__(self, source: FrameSource, indices: Sequence[int], encode: Any, device: torch.device,
                 prefetch: int, batch: int) -> None:
        self._indices = list(indices)
        self._encode = encode
        self._device = device
        self._batch = max(1, batch)
        self._prefetcher = _Prefetcher(source, self._indices, max(prefetch, self._batch), device.type == "cuda")

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        try:
            for start in range(0, len(self._indices), self._batch):
                chunk = self._indices[start:start + self._batch]
                feats = self._encode(to_device([self._prefetcher.get() for _ in chunk], self._device))
                for i, frame_idx in enumerate(chunk):
                    yield frame_idx, feats.index(i) if len(chunk) > 1 else feats
        finally:
            self.close()

    def close(self) -> None:
        self._prefetcher.close()
