"""What a read of a video file decodes, and how many frames a file has, on real mp4 files written in the test:
strided, windowed and backward reads of a long GOP equal a full decode at those indices (PyAV converts only the asked
frames and seeks past keyframes), a file whose header claims more frames than it holds, a variable-frame-rate file."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.actor.decoding import VideoError, open_video
from tests.helpers import make_video, synthetic_frames
from tests.pipeline.actor.decoders import FILE_DECODERS

LONG = 300  # frames; keyframes at 0 and 250 only (x264's default GOP 250, no scene cuts)


def _write(path, frames, options: dict, container_options: dict | None = None, pts: list[int] | None = None) -> str:
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = options
        if pts is not None:  # timestamps in milliseconds
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, frame in enumerate(frames):
            out = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts is not None:
                out.pts, out.time_base = pts[i], Fraction(1, 1000)
            container.mux(stream.encode(out))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def long_gop(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A 300-frame GOP-250 mp4 and its frames decoded in one forward pass (the reference)."""
    frames = synthetic_frames(LONG, height=32, width=64, seed=3)
    path = _write(tmp_path_factory.mktemp("gop") / "gop250.mp4", frames,
                  {"crf": "18", "g": "250", "bf": "2", "sc_threshold": "0"})
    with open_video(path, decoder="pyav") as src:
        return path, np.stack(list(src.iter_frames(range(LONG))))


READS = {
    "every 4th": list(range(0, LONG, 4)),
    "every 60th": list(range(0, LONG, 60)),
    "clip 260..299": list(range(260, LONG)),
    "clip 120..299 every 3rd": list(range(120, LONG, 3)),
    "backward every 4th": list(range(LONG - 1, -1, -4)),
    "backward clip 280..100": list(range(280, 99, -1)),
}


@pytest.mark.parametrize("decoder", FILE_DECODERS)
def test_strided_window_and_backward_reads_equal_a_full_decode(long_gop, decoder):
    path, full = long_gop
    with open_video(path, decoder=decoder) as src:
        assert src.num_frames == src.header_frames == LONG
        for name, indices in READS.items():
            got = np.stack(list(src.iter_frames(indices)))
            np.testing.assert_array_equal(got, full[indices], err_msg=name)


class _Counting:
    """A PyAV container whose decoded frames count what is decoded and what is converted to RGB."""

    def __init__(self, container) -> None:
        self._container = container
        self.decoded = self.converted = 0

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self.decoded += 1
            yield _CountedFrame(frame, self)

    def __getattr__(self, name: str):
        return getattr(self._container, name)


class _CountedFrame:
    def __init__(self, frame, counts: _Counting) -> None:
        self._frame, self._counts = frame, counts

    def to_ndarray(self, *args, **kwargs):
        self._counts.converted += 1
        return self._frame.to_ndarray(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._frame, name)


def _costs(src, indices) -> tuple[int, int]:
    counting = _Counting(src._container)
    src._container = counting
    list(src.iter_frames(indices))
    src._container = counting._container
    return counting.decoded, counting.converted


def test_pyav_converts_only_the_asked_frames_and_seeks_to_the_window(long_gop):
    path, _ = long_gop
    with open_video(path, decoder="pyav") as src:
        decoded, converted = _costs(src, range(0, LONG, 4))
        assert converted == 75 and decoded <= LONG - 3  # decode-and-drop up to frame 296
    with open_video(path, decoder="pyav") as src:
        decoded, converted = _costs(src, range(260, LONG, 2))
        assert converted == 20 and decoded <= LONG - 250  # from keyframe 250, not from frame 0


def test_pyav_seeks_to_keyframes_when_the_step_is_longer_than_the_gop(tmp_path):
    frames = synthetic_frames(64, height=32, width=64, seed=4)
    path = make_video(tmp_path / "gop8.mp4", frames)  # a keyframe every 8 frames
    with open_video(str(path), decoder="pyav") as src:
        decoded, converted = _costs(src, [0, 16, 32, 48])
    assert converted == 4 and decoded < 48 / 2  # each asked frame is a keyframe: a seek, not 48 decodes


def test_the_discovery_walk_decodes_a_long_gop_about_once(long_gop):
    """``prompts=auto``'s walk over keyframes every 20 frames of the GOP-250 file, with the real session (random
    weights) and a generator that finds one square on every keyframe (so the session steps to each keyframe): the
    step and the generator share each keyframe's decode, so the file decodes about once. Were the generator to read
    its keyframe again, the decoder, past it, would restart at frame 0 (or 250) each time: over 1,500 decodes."""
    from types import SimpleNamespace

    import torch

    from sam2core.build import build_model
    from sam2core.video import VideoSession
    from sam2core.video.discovery import DiscoveryOptions, discover_objects

    class Square:
        def generate_masks(self, image, features, skip=None) -> SimpleNamespace:
            mask = torch.zeros(1, *image.shape[:2], dtype=torch.bool)
            mask[0, 4:20, 4:20] = True
            return SimpleNamespace(masks=mask, stability_score=torch.ones(1))

    path, _ = long_gop
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny", image_size=32)
    with open_video(path, decoder="pyav") as src:
        counting = _Counting(src._container)
        src._container = counting
        session = VideoSession(model, src)
        found = discover_objects(session, Square(), DiscoveryOptions(every=20, max_objects=50, min_area=1))
        src._container = counting._container
    assert found and counting.converted == 15 and counting.decoded <= LONG


@pytest.fixture(scope="module")
def short_file(tmp_path_factory) -> tuple[str, np.ndarray]:
    """An mp4 whose header (moov first) claims 40 frames but whose data ends 60% of the way: the last packet it
    holds is cut short; and the frames of the whole file."""
    folder = tmp_path_factory.mktemp("short")
    frames = synthetic_frames(40, height=32, width=64, seed=6)
    whole = _write(folder / "whole.mp4", frames, {"crf": "18", "g": "8", "bf": "2"}, {"movflags": "faststart"})
    data = open(whole, "rb").read()
    short = folder / "short.mp4"
    short.write_bytes(data[: int(len(data) * 0.6)])
    with open_video(whole, decoder="pyav") as src:
        return str(short), np.stack(list(src.iter_frames(range(40))))


@pytest.mark.parametrize("decoder", ["pyav", FILE_DECODERS[2]])
def test_a_header_claiming_more_frames_gives_what_decodes(short_file, decoder):
    path, whole = short_file
    with open_video(path, decoder=decoder) as src:
        assert src.header_frames == 40 and 0 < src.num_frames < 40  # the packets the file holds
        held = src.num_frames
        got = list(src.iter_frames(range(held)))  # the cut last packet fails: the read ends there, no error
        assert 0 < len(got) <= held and src.num_frames == len(got)
        np.testing.assert_array_equal(np.stack(got), whole[:len(got)])
        np.testing.assert_array_equal(np.stack(list(src.iter_frames(range(len(got) - 1, -1, -1)))),
                                      whole[len(got) - 1::-1])
        with pytest.raises(IndexError, match="short.mp4"):
            list(src.iter_frames([len(got)]))


def test_a_backward_read_into_an_undecodable_tail_names_the_frame(short_file):
    path, _ = short_file
    with open_video(path, decoder="pyav") as src:
        with pytest.raises(VideoError, match=r"short.mp4: frame \d+ could not be decoded: EOFError"):
            list(src.iter_frames(range(src.num_frames - 1, -1, -1)))


def test_decord_cannot_open_a_file_whose_index_points_past_its_end(short_file):
    with pytest.raises(VideoError, match="short.mp4"):
        open_video(short_file[0], decoder="decord")


@pytest.mark.parametrize("decoder", FILE_DECODERS)
def test_variable_frame_rate_is_sampled_by_index(tmp_path, decoder):
    frames = synthetic_frames(24, height=32, width=64, seed=7)
    gaps = [20 if i % 3 else 100 for i in range(24)]  # 50 fps runs with 10 fps holes
    path = _write(tmp_path / "vfr.mp4", frames, {"crf": "18", "g": "8", "bf": "0"},
                  pts=[int(t) for t in np.cumsum([0] + gaps[:-1])])
    with open_video(path, decoder="pyav") as ref:
        reference = np.stack(list(ref.iter_frames(range(24))))
    assert np.abs(reference.astype(int) - frames).mean() < 6  # frame i is the i-th frame written
    with open_video(path, decoder=decoder) as src:
        assert src.num_frames == 24
        np.testing.assert_array_equal(np.stack(list(src.iter_frames(range(0, 24, 5)))), reference[::5])
        np.testing.assert_array_equal(np.stack(list(src.iter_frames(range(23, -1, -2)))), reference[23::-2])
