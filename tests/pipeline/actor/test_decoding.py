"""pipeline.actor.decoding on real mp4 files (written with PyAV) and frame folders, local and on S3."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from pipeline.actor.decoding import VideoError, open_video
from pipeline.actor.decoding import backward_span as decoding_span
from pipeline.io.storage import write_bytes
from sam2core.video.feature_stream import FrameSource
from tests.helpers import make_frame_folder, make_video, synthetic_frames
from tests.pipeline.actor.decoders import FILE_DECODERS

N = 40  # > 2 chunks of 16, keyframe every 8 frames, B-frames on


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return synthetic_frames(N, height=48, width=80, seed=1)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory, frames) -> str:
    return str(make_video(tmp_path_factory.mktemp("vid") / "clip.mp4", frames, fps=24))


def _all(source, indices):
    return np.stack(list(source.iter_frames(indices)))


@pytest.mark.parametrize("decoder", FILE_DECODERS)
def test_mp4_probe_and_orders(mp4, frames, decoder):
    with open_video(mp4, decoder=decoder) as src:
        assert isinstance(src, FrameSource)
        assert (src.num_frames, src.header_frames, src.height, src.width) == (N, N, 48, 80)
        assert src.fps == pytest.approx(24.0)
        forward = _all(src, range(N))
        assert forward.dtype == np.uint8 and forward.shape == (N, 48, 80, 3)
        assert np.abs(forward.astype(int) - frames).mean() < 6  # lossy codec, same picture
        backward = _all(src, range(N - 1, -1, -1))
        np.testing.assert_array_equal(backward, forward[::-1])
        scattered = [33, 2, 2, 17, 39, 0, 8, 7]
        np.testing.assert_array_equal(_all(src, scattered), forward[scattered])
        with pytest.raises(IndexError, match="clip.mp4.*40"):
            list(src.iter_frames([40]))


@pytest.mark.parametrize("decoder", FILE_DECODERS[1:])
def test_decoders_give_identical_frames(mp4, decoder):
    """The decoders use FFmpeg's yuv420p→rgb24 conversion here, so frames match exactly (not just closely)."""
    with open_video(mp4, decoder=decoder) as a, open_video(mp4, decoder="pyav") as b:
        np.testing.assert_array_equal(_all(a, range(N)), _all(b, range(N)))


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_mp4_on_s3_uses_and_removes_temp_copy(s3_server, s3_bucket, mp4, decoder, tmp_path, monkeypatch):
    so = s3_server["storage_options"]
    uri = f"s3://{s3_bucket}/videos/clip.mp4"
    write_bytes(uri, open(mp4, "rb").read(), so)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with open_video(mp4, decoder=decoder) as local:
        expected = _all(local, range(N))
    src = open_video(uri, so, decoder=decoder)
    assert list(tmp_path.iterdir())  # the temp copy exists while the source is open
    np.testing.assert_array_equal(_all(src, range(N - 1, -1, -1)), expected[::-1])
    src.close()
    src.close()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_frame_folder_local(tmp_path, frames, ext):
    folder = make_frame_folder(tmp_path / "v", frames[:12], ext=ext)
    (folder / "notes.txt").write_text("ignored")
    with open_video(str(folder)) as src:
        assert (src.num_frames, src.height, src.width, src.fps) == (12, 48, 80, None)
        got = _all(src, [11, 3, 0])
        if ext == "png":
            np.testing.assert_array_equal(got, frames[[11, 3, 0]])
        else:
            assert np.abs(got.astype(int) - frames[[11, 3, 0]]).mean() < 4


def test_frame_folder_numeric_order_with_gaps(tmp_path, frames):
    from PIL import Image

    folder = tmp_path / "sparse"
    folder.mkdir()
    for name, i in (("0", 0), ("4", 1), ("12", 2), ("8", 3)):
        Image.fromarray(frames[i]).save(folder / f"{name}.png")
    with open_video(f"file://{folder}") as src:
        assert src.num_frames == 4
        np.testing.assert_array_equal(_all(src, range(4)), frames[[0, 1, 3, 2]])


def test_frame_folder_on_s3(s3_server, s3_bucket, tmp_path, frames):
    so = s3_server["storage_options"]
    folder = make_frame_folder(tmp_path / "v", frames[:5], ext="png")
    for f in folder.iterdir():
        write_bytes(f"s3://{s3_bucket}/JPEGImages/v/{f.name}", f.read_bytes(), so)
    with open_video(f"s3://{s3_bucket}/JPEGImages/v", so) as src:
        assert src.num_frames == 5
        np.testing.assert_array_equal(_all(src, range(4, -1, -1)), frames[4::-1])


def test_corrupt_and_missing_inputs_raise_video_error(tmp_path, frames, mp4):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    for decoder in ("decord", "pyav"):  # torchcodec: test_decoding_reads (it needs its own environment)
        with pytest.raises(VideoError, match="broken.mp4"):
            open_video(str(bad), decoder=decoder)
    with pytest.raises(VideoError, match="nothere.mp4"):
        open_video(str(tmp_path / "nothere.mp4"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="empty"):
        open_video(str(empty))
    folder = make_frame_folder(tmp_path / "badframe", frames[:3], ext="png")
    (folder / "00001.png").write_bytes(b"not a png")
    with open_video(str(folder)) as src:
        with pytest.raises(VideoError, match="frame 1"):
            list(src.iter_frames([0, 1]))
    with pytest.raises(ValueError, match="decoder"):
        open_video(mp4, decoder="opencv")


def test_truncated_mp4_raises_video_error(tmp_path, mp4):
    data = open(mp4, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    for decoder in ("decord", "pyav"):
        with pytest.raises(VideoError, match="cut.mp4"):
            with open_video(str(cut), decoder=decoder) as src:
                list(src.iter_frames(range(src.num_frames)))


LONG = 300  # frames of a video with x264's default keyframe interval (250): one GOP of 250, one of 50


@pytest.fixture(scope="module")
def long_gop_mp4(tmp_path_factory) -> str:
    """x264 with ``g=250`` and no scene-cut keyframes: keyframes at 0 and 250 only."""
    import av

    path = tmp_path_factory.mktemp("gop") / "gop250.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.options = {"crf": "18", "g": "250", "bf": "2", "sc_threshold": "0"}
        for frame in synthetic_frames(LONG, height=32, width=64, seed=3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


class _CountingContainer:
    """A PyAV container that counts the frames its decoder produces."""

    def __init__(self, container) -> None:
        self._container = container
        self.decoded = 0

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self.decoded += 1
            yield frame

    def __getattr__(self, name: str):
        return getattr(self._container, name)


def _count_decodes(src) -> tuple[np.ndarray, int, int, list[int]]:
    """Frames of a forward then a backward read of the whole video, and the frames each decoded; the size of every
    span the backward read held."""
    counter = _CountingContainer(src._container)
    src._container = counter
    forward = _all(src, range(LONG))
    forward_cost, counter.decoded = counter.decoded, 0
    spans = []
    decode = src._decode
    src._decode = lambda lo, hi, wanted: spans.append(len(wanted)) or decode(lo, hi, wanted)
    backward = _all(src, range(LONG - 1, -1, -1))
    np.testing.assert_array_equal(backward, forward[::-1])
    return forward, forward_cost, counter.decoded, spans


def test_backward_read_decodes_a_long_gop_about_once(long_gop_mp4):
    """Each 16-frame chunk read backward used to restart at its keyframe (~9x the forward decodes at GOP 250)."""
    with open_video(long_gop_mp4, decoder="pyav") as src:
        assert src._keyframes.tolist() == [0, 250]
        _, forward_cost, backward_cost, spans = _count_decodes(src)
    assert forward_cost == LONG
    assert backward_cost <= 1.5 * forward_cost, (backward_cost, forward_cost)
    assert spans == [50, 252]  # [250, 299] from keyframe 250, then [0, 251] from keyframe 0


def test_backward_read_holds_at_most_its_budget(long_gop_mp4, monkeypatch):
    import pipeline.actor.decoding.reading as decoding

    monkeypatch.setattr(decoding, "HOLD_BYTES", 100 * 32 * 64 * 3)  # 100 frames of this video
    assert decoding.hold_frames(32, 64) == 100
    with open_video(long_gop_mp4, decoder="pyav") as src:
        _, forward_cost, backward_cost, spans = _count_decodes(src)
    assert max(spans) <= 100
    # restarts at keyframe 0 for [152, 251], [56, 155], [0, 59]: more decodes, never more memory
    assert spans == [50, 100, 100, 60] and backward_cost == 50 + 252 + 156 + 60


def test_backward_span_keeps_from_the_keyframe_within_the_budget():
    keys = np.array([0, 250])
    assert decoding_span(284, 299, keys, 500) == 250  # back to the keyframe the decoder starts from anyway
    assert decoding_span(284, 299, keys, 20) == 280  # the budget ends it first
    assert decoding_span(236, 251, keys, 100) == 152
    assert decoding_span(236, 251, keys, 4) == 236  # never past the chunk's first frame


@pytest.mark.parametrize("decoder", FILE_DECODERS)
def test_long_gop_backward_equals_forward_reversed(long_gop_mp4, decoder):
    with open_video(long_gop_mp4, decoder=decoder) as src:
        assert src._keyframes.tolist() == [0, 250]
        forward = _all(src, range(LONG))
        np.testing.assert_array_equal(_all(src, range(LONG - 1, -1, -1)), forward[::-1])
        skipping = list(range(LONG - 1, -1, -7))  # descending with gaps: only the asked-for frames are held
        np.testing.assert_array_equal(_all(src, skipping), forward[skipping])


def test_frame_folder_with_two_files_of_one_index_is_refused(tmp_path, frames):
    folder = make_frame_folder(tmp_path / "dup", frames[:3], ext="jpg")
    from PIL import Image

    Image.fromarray(frames[1]).save(folder / "1.png")
    with pytest.raises(VideoError, match=r"dup: frames 00001\.jpg and 1\.png have the same index 1"):
        open_video(str(folder))


def test_a_decoder_that_cannot_load_is_refused_at_the_spec():
    from pipeline.actor.decoding import decoder_unavailable
    from pipeline.specs import DataSpec, SpecError

    for decoder in ("pyav", "decord", "torchcodec"):
        reason = decoder_unavailable(decoder)
        if reason is None:
            assert DataSpec(name="d", manifest="m.parquet", root=".", decoder=decoder).decoder == decoder
        else:
            with pytest.raises(SpecError, match=f"^data.decoder={decoder}: torchcodec"):
                DataSpec(name="d", manifest="m.parquet", root=".", decoder=decoder)
    with pytest.raises(SpecError, match="data.decoder=opencv: expected one of pyav, torchcodec"):
        DataSpec(name="d", manifest="m.parquet", root=".", decoder="opencv")


def test_backward_strided_read_holds_asked_frames_not_a_range(long_gop_mp4, monkeypatch):
    """Every 4th frame backward (a frame_step=4 pass back from a prompt): the budget counts the frames kept, so one
    decode from keyframe 0 serves all 75 asked frames instead of a restart every 100 frames of the video."""
    import pipeline.actor.decoding.reading as decoding

    monkeypatch.setattr(decoding, "HOLD_BYTES", 100 * 32 * 64 * 3)  # 100 frames of this video
    asked = list(range(LONG - 1, -1, -4))
    with open_video(long_gop_mp4, decoder="pyav") as src:
        forward = _all(src, range(LONG))
        counter = _CountingContainer(src._container)
        src._container = counter
        spans = []
        decode = src._decode
        src._decode = lambda lo, hi, wanted: spans.append(len(wanted)) or decode(lo, hi, wanted)
        np.testing.assert_array_equal(_all(src, asked), forward[asked])
    assert spans == [75] and counter.decoded <= LONG + 2
