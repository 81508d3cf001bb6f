"""Video sources for the engine: a video file (PyAV, torchcodec or decord) or a folder of frames named by integer
index, one ``VideoSource`` per video (sam2core's ``FrameSource`` protocol; its docstring is the contract: frames by
index in display orientation, the count that decodes, how a read ends early).

Modules: ``source`` (the surface, errors, display rotation), ``reading`` (spans decoded forward from keyframes:
strided, windowed and backward reads), one module per decoder (``pyav_source``, ``torchcodec_source``,
``decord_source``, ``frame_folder``), ``local_copy`` (temp copies of remote files, swept when their process is gone).
Unreadable or corrupt input raises ``VideoError`` naming the uri; a storage outage ``InputUnavailable``.
"""

from __future__ import annotations

from pipeline.actor.decoding.frame_folder import FrameFolderSource
from pipeline.actor.decoding.local_copy import LocalCopy, sweep_stale_copies
from pipeline.actor.decoding.reading import backward_span, hold_frames
from pipeline.actor.decoding.source import InputUnavailable, VideoError, VideoSource, access_error
from pipeline.actor.decoding.torchcodec_source import torchcodec_unavailable
from pipeline.io.storage import filesystem

# the decoders of video files; "torchcodec-cuda" decodes on the GPU (NVDEC) where torchcodec has a CUDA build
DECODERS = ("pyav", "torchcodec", "torchcodec-cuda", "decord")

__all__ = ["DECODERS", "InputUnavailable", "VideoError", "VideoSource", "backward_span", "decoder_unavailable",
           "hold_frames", "open_video", "sweep_stale_copies"]


def decoder_unavailable(decoder: str) -> str | None:
    """Why ``decoder`` cannot run in this environment (checked at the job's edge), or ``None``."""
    if decoder not in DECODERS:
        return f"expected one of {', '.join(DECODERS)}"
    if decoder.startswith("torchcodec"):
        return torchcodec_unavailable()
    return None


def open_video(uri: str, storage_options: dict | None = None, decoder: str = "pyav") -> VideoSource:
    """Open a video file (``decoder``: one of ``DECODERS``) or a folder of integer-named frames at any fsspec URI."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    try:
        fs, path = filesystem(uri, storage_options)
        is_dir = fs.isdir(path)
        if not is_dir and not fs.exists(path):
            raise VideoError(f"{uri}: no such video file or frame folder")
    except VideoError:
        raise
    except Exception as e:
        raise access_error(uri, "accessing the video", e) from e
    if is_dir:
        return FrameFolderSource(uri, storage_options)
    try:
        local = LocalCopy(uri, storage_options)
    except Exception as e:
        raise access_error(uri, "fetching the video", e) from e
    try:
        if decoder == "pyav":
            from pipeline.actor.decoding.pyav_source import PyAVSource

            return PyAVSource(uri, local)
        if decoder == "decord":
            from pipeline.actor.decoding.decord_source import DecordSource

            return DecordSource(uri, local)
        from pipeline.actor.decoding.torchcodec_source import TorchCodecSource

        return TorchCodecSource(uri, local, device="cuda" if decoder == "torchcodec-cuda" else "cpu")
    except BaseException:
        local.release()
        raise
