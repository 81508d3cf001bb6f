"""Frames in, image features out: a frame-source protocol, an in-memory source, a look-ahead feature stream, and
the features a session keeps of frames it encoded outside a pass.

The engine never holds the whole video. It asks a ``FrameSource`` for the frames of one propagation pass in order;
a background thread decodes a few frames ahead (``prefetch``) while the model works. A second one (``overlap``)
turns them into model inputs on the model's device and encodes ``encoder_batch`` frames per image-encoder call while
the caller tracks the previous frame: the encoder does not depend on tracking state, and torch releases the GIL, so
on CPU both threads compute at once and on CUDA the encoder's kernels run on a stream of their own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from sam2core.modeling.sam2 import ImageFeatures

from .stage import ProducerStage


@runtime_checkable
class FrameSource(Protocol):
    """Random-access video: ``iter_frames`` yields uint8 HxWx3 frames (numpy or torch) in the order asked.

    ``num_frames`` may overstate the video (a container whose header claims more frames than decode): ``iter_frames``
    then stops yielding after the last frame that exists, and a forward pass ends there (the session's
    ``num_frames`` says where). None: not known in advance (``live.PushedFrames``, frames pushed to a session).
    """

    num_frames: int | None
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


def host_frame(frame: np.ndarray | torch.Tensor, frame_idx: int, source: FrameSource, pin: bool) -> torch.Tensor:
    """Check one decoded frame against the source's size and make it a uint8 [H,W,3] CPU tensor (pinned for CUDA)."""
    if isinstance(frame, np.ndarray) and not frame.flags.writeable:
        frame = frame.copy()  # decoders may hand out read-only buffers; torch wants to own writable memory
    tensor = torch.as_tensor(frame)
    expected = (source.height, source.width, 3)
    if tensor.dtype != torch.uint8 or tuple(tensor.shape) != expected:
        raise ValueError(f"frame {frame_idx}: expected uint8 {expected}, got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor.pin_memory() if pin and tensor.device.type == "cpu" else tensor


def stack_frames(frames: list[torch.Tensor]) -> torch.Tensor:
    """Host frames as one [B,H,W,3] batch; pinned frames stay pinned (stacked into a pinned buffer), as a batch in
    pageable memory would make its copy to the device wait for the host."""
    if len(frames) == 1:
        return frames[0].unsqueeze(0)
    first = frames[0]
    batch = torch.empty((len(frames), *first.shape), dtype=first.dtype, device=first.device,
                        pin_memory=first.is_pinned())
    return torch.stack(frames, out=batch)


def to_device(frames: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Stack host frames into a [B,H,W,3] uint8 batch on ``device`` (asynchronous copy from pinned memory)."""
    return stack_frames(frames).to(device, non_blocking=True)


def _decoded(source: FrameSource, indices: list[int], pin: bool) -> Iterator[torch.Tensor]:
    if not indices:
        return  # nothing asked: the source is not touched (another stream may be reading it)
    for frame_idx, frame in zip(indices, source.iter_frames(indices)):
        yield host_frame(frame, frame_idx, source, pin)


def _feature_tensors(feats: ImageFeatures) -> tuple[torch.Tensor, ...]:
    return (feats.feat, feats.pos, *feats.high_res)


def features_nbytes(feats: ImageFeatures) -> int:
    """Bytes of one frame's (or batch's) features."""
    return sum(t.numel() * t.element_size() for t in _feature_tensors(feats))


def _owned(feats: ImageFeatures) -> ImageFeatures:
    """``feats`` with tensors that hold only their own bytes: a frame's slice of a batch encoded together
    (``encoder_batch`` > 1) is copied, so that keeping one frame does not keep its whole batch."""
    def shares(t: torch.Tensor) -> bool:
        return t.untyped_storage().nbytes() > t.numel() * t.element_size()

    if not any(shares(t) for t in _feature_tensors(feats)):
        return feats

    def own(t: torch.Tensor) -> torch.Tensor:
        return t.clone() if shares(t) else t

    return ImageFeatures(own(feats.feat), own(feats.pos), (own(feats.high_res[0]), own(feats.high_res[1])))


KEPT_FEATURES_BYTES = 256 << 20  # about 25 frames at 1024 px in bfloat16, 400 at 256 px in float32


class KeptFeatures:
    """Features of frames of one video encoded outside a pass, kept for the passes that follow: the frames the
    current prompts are on (each is needed again to encode the prompts' memories and to track the frame's other
    objects), until the prompts are reset, and frames handed over for good (``lasting``: the keyframes object
    discovery encoded, where its final pass prompts the objects it found). A frame is then encoded once, not two or
    three times. Frames are kept first come, first kept, while their bytes stay within ``KEPT_FEATURES_BYTES``
    (memory stays bounded however many frames are prompted); a frame past it is encoded again when needed, as
    without this store."""

    def __init__(self) -> None:
        self.budget = KEPT_FEATURES_BYTES
        self.nbytes = 0
        self._frames: dict[int, tuple[ImageFeatures, bool]] = {}  # frame -> (features, lasting)

    def get(self, frame_idx: int) -> ImageFeatures | None:
        """The kept features of ``frame_idx``, or None."""
        kept = self._frames.get(frame_idx)
        return None if kept is None else kept[0]

    def keep(self, frame_idx: int, feats: ImageFeatures, lasting: bool = False) -> bool:
        """Keep one frame's features (batch 1) if they fit the budget; whether they are kept now. ``lasting`` ones
        outlive ``drop_passing``."""
        if frame_idx in self._frames:
            held, was_lasting = self._frames[frame_idx]
            self._frames[frame_idx] = (held, was_lasting or lasting)
            return True
        size = features_nbytes(feats)
        if self.nbytes + size > self.budget:
            return False
        self._frames[frame_idx] = (_owned(feats), lasting)
        self.nbytes += size
        return True

    def lasting(self) -> list[tuple[int, ImageFeatures]]:
        """(frame, features) of the frames kept for good, in the order they were kept."""
        return [(t, feats) for t, (feats, lasting) in self._frames.items() if lasting]

    def drop_passing(self) -> None:
        """Forget the frames not kept for good (the prompts they were kept for are gone)."""
        for t in [t for t, (_, lasting) in self._frames.items() if not lasting]:
            self.nbytes -= features_nbytes(self._frames.pop(t)[0])


class FeatureStream:
    """Image features for a sequence of frames, encoded ``batch`` frames per call.

    A daemon thread decodes up to ``prefetch`` frames ahead. With ``overlap`` a second one (with
    ``encoder_threads`` intra-op threads on CPU, see ``sam2core.thread_plan``) also preprocesses and encodes the
    next batch while the caller tracks the current one (one batch waits in a queue, one is being encoded; on CUDA on
    its own stream, handed over through an event). Without it the caller encodes. ``encode`` maps a [B,H,W,3] uint8
    tensor on the model device to the batch's ``ImageFeatures``. Iterating yields
    ``(frame_idx, features_of_that_frame)``; errors name the frames; ``close`` stops the threads early. A source
    that stops yielding before the last frame asked (its video ends early) ends the stream after the last frame it
    gave.
    """

    def __init__(self, source: FrameSource, indices: Sequence[int], encode: Callable[[torch.Tensor], ImageFeatures],
                 device: torch.device, prefetch: int, batch: int, overlap: bool,
                 encoder_threads: int | None = None) -> None:
        self._indices = list(indices)
        self._encode = encode
        self._device = device
        self._batch = max(1, batch)
        self._encoder_threads = encoder_threads
        self._frames = ProducerStage(lambda: _decoded(source, self._indices, device.type == "cuda"),
                                     max(prefetch, self._batch), "frame-decoder")
        self._decoded = iter(self._frames)
        self._encoder = ProducerStage(self._encoded_on_side_stream, 1, "frame-encoder") if overlap else None

    def _chunks(self) -> Iterator[list[int]]:
        for start in range(0, len(self._indices), self._batch):
            yield self._indices[start:start + self._batch]

    def _encoded(self) -> Iterator[tuple[list[int], ImageFeatures]]:
        """(frames, their features) per batch, on the calling thread."""
        for chunk in self._chunks():
            host = list(islice(self._decoded, len(chunk)))
            if not host:
                return  # the source ended (the video is shorter than its count said)
            ended, chunk = len(host) < len(chunk), chunk[:len(host)]
            frames = to_device(host, self._device)
            try:
                feats = self._encode(frames)
            except Exception as exc:
                where = f"frame {chunk[0]}" if len(chunk) == 1 else f"frames {chunk[0]}..{chunk[-1]}"
                raise RuntimeError(f"{where}: image encoding failed: {exc}") from exc
            yield chunk, feats
            if ended:
                return

    def _encoded_on_side_stream(self) -> Iterator[tuple[list[int], ImageFeatures, torch.cuda.Event | None]]:
        """``_encoded`` for the encoder thread: on CUDA its kernels run on a side stream and an event marks each
        batch's completion, for the consumer's stream to wait on; on CPU with its share of the intra-op threads."""
        if self._device.type != "cuda":
            if self._encoder_threads is not None:
                torch.set_num_threads(self._encoder_threads)  # this thread's own setting; it ends with the pass
            for chunk, feats in self._encoded():
                yield chunk, feats, None
            return
        stream = torch.cuda.Stream(self._device)
        with torch.cuda.stream(stream):
            for chunk, feats in self._encoded():
                done = torch.cuda.Event()
                done.record(stream)
                yield chunk, feats, done

    def _receive(self) -> Iterator[tuple[list[int], ImageFeatures]]:
        """Batches from the encoder thread, made safe to use on the consumer's current CUDA stream."""
        for chunk, feats, done in self._encoder:
            if done is not None:
                current = torch.cuda.current_stream(self._device)
                current.wait_event(done)
                for tensor in _feature_tensors(feats):
                    tensor.record_stream(current)  # freed only once the consumer's stream is done with it
            yield chunk, feats

    def __iter__(self) -> Iterator[tuple[int, ImageFeatures]]:
        try:
            for chunk, feats in (self._receive() if self._encoder is not None else self._encoded()):
                for i, frame_idx in enumerate(chunk):
                    yield frame_idx, feats.index(i) if len(chunk) > 1 else feats
        finally:
            self.close()

    def close(self) -> None:
        """Stop the decoder first: an encoder thread waiting for a frame then sees StageAborted and ends."""
        self._frames.abort()
        if self._encoder is not None:
            self._encoder.abort()
