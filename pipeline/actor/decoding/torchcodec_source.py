"""Video files decoded with torchcodec (PyTorch's decoder; FFmpeg's shared libraries from the system, CPU or
CUDA/NVDEC). Optional: it loads only where its FFmpeg and a matching torch build are present."""

from __future__ import annotations

import numpy as np

from pipeline.actor.decoding.local_copy import LocalCopy
from pipeline.actor.decoding.reading import KeyframeSource, decode_each
from pipeline.actor.decoding.source import VideoError


def torchcodec_unavailable() -> str | None:
    """Why torchcodec cannot decode here (not installed, its libraries or FFmpeg do not load), or ``None``."""
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder  # noqa: F401 - loads the FFmpeg-dependent core
    except Exception as e:  # ImportError, or OSError from a library that does not load (and what it needs)
        if isinstance(e, ModuleNotFoundError) and e.name == "torchcodec":
            return "torchcodec is not installed (pip install '.[torchcodec]'; the README's Decoders says which build)"
        causes = ": ".join(str(c).splitlines()[0] for c in (e, e.__cause__) if c is not None and str(c))
        if any(name in causes for name in ("libnvrtc", "libcudart", "libtorch_cuda", "libc10_cuda")):
            causes += (" (this torchcodec build needs a CUDA build of torch; with torch's CPU build, install "
                       "torchcodec from PyTorch's CPU wheel index)")
        return f"torchcodec does not load: {causes or type(e).__name__}"
    if getattr(torchcodec, "ffmpeg_major_version", None) is None:
        return "torchcodec finds no FFmpeg shared libraries (install FFmpeg, e.g. apt-get install ffmpeg)"
    return None


class TorchCodecSource(KeyframeSource):
    """Video file decoded with torchcodec on ``device`` ("cpu", or "cuda" for NVDEC; frames come back to the host
    as the engine's numpy frames); each span is one ``get_frames_at`` of its sorted indices (torchcodec seeks only
    when a keyframe lies before the next frame, decodes-and-drops otherwise, and applies the display rotation).

    The exact seek mode scans the file's packets at open: ``num_frames`` is its count from content.
    """

    def __init__(self, uri: str, local: LocalCopy, device: str = "cpu") -> None:
        reason = torchcodec_unavailable()
        if reason:
            raise VideoError(f"{uri}: {reason}")
        from torchcodec.decoders import VideoDecoder

        self.uri, self._local = uri, local
        try:
            self._decoder = VideoDecoder(local.path, seek_mode="exact", dimension_order="NHWC", device=device,
                                         num_ffmpeg_threads=0)
            meta = self._decoder.metadata
            self.num_frames = int(meta.num_frames_from_content or 0)
            self._keyframes = np.union1d([0], self._decoder._get_key_frame_indices().numpy())
        except Exception as e:
            raise VideoError(f"{uri}: cannot open video with torchcodec: {str(e).splitlines()[-1]}") from e
        if self.num_frames == 0:
            raise VideoError(f"{uri}: video has no frames")
        self.header_frames = int(meta.num_frames_from_header) if meta.num_frames_from_header else None
        self.height, self.width = int(meta.height), int(meta.width)
        self.fps = float(meta.average_fps) if meta.average_fps else None

    def _decode(self, lo: int, hi: int, wanted: set[int]) -> dict[int, np.ndarray]:
        ordered = sorted(wanted)
        try:
            batch = self._decoder.get_frames_at(ordered).data.cpu().numpy()
        except Exception:  # which frame failed: one at a time (only on a failing span)
            return decode_each(ordered, lambda f: self._decoder.get_frame_at(f).data.cpu().numpy())
        return {f: batch[i] for i, f in enumerate(ordered)}

    def close(self) -> None:
        self._decoder = None
        super().close()
