"""Display rotation (phone videos): every decoder gives the frames as they display, on real mp4 files whose stream
carries a display matrix (written with PyAV). Each file is compared with its own stored frames: x264 encodes with
threads, so two encodes of the same frames may differ."""

from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline.actor.decoding import open_video
from tests.helpers import synthetic_frames
from tests.pipeline.actor.decoders import FILE_DECODERS

N = 20
H, W = 32, 64


def _write(path, frames, rotation: int) -> str:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "18", "g": "8", "bf": "2"}
        stream.set_display_rotation(rotation)  # degrees counter-clockwise, as FFmpeg's display matrix
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def _stored(path: str) -> np.ndarray:
    """The frames as the file stores them, display matrix ignored."""
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[int, tuple[np.ndarray, str]]:
    """One file per rotation, same frames otherwise, with the frames it stores."""
    folder = tmp_path_factory.mktemp("rot")
    frames = synthetic_frames(N, height=H, width=W, seed=5)
    files = {r: _write(folder / f"rot{r}.mp4", frames, r) for r in (90, 180, 270)}
    return {r: (_stored(path), path) for r, path in files.items()}


@pytest.mark.parametrize("rotation,turns", [(90, 1), (180, 2), (270, 3)])
@pytest.mark.parametrize("decoder", FILE_DECODERS)
def test_every_decoder_gives_the_displayed_orientation(videos, decoder, rotation, turns):
    stored, path = videos[rotation]
    assert stored.shape == (N, H, W, 3)
    expected = np.stack([np.rot90(f, turns) for f in stored])  # turned counter-clockwise, as players show it
    with open_video(path, decoder=decoder) as src:
        assert (src.height, src.width) == expected.shape[1:3] == ((W, H) if rotation != 180 else (H, W))
        np.testing.assert_array_equal(np.stack(list(src.iter_frames(range(N)))), expected)
        backward = list(range(N - 1, -1, -3))
        np.testing.assert_array_equal(np.stack(list(src.iter_frames(backward))), expected[backward])
