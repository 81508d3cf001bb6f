"""Display rotation (phone videos): every decoder gives the frames as they display, on real mp4 files whose stream
carries a display matrix (written with PyAV)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline.actor.decoding import open_video
from tests.helpers import synthetic_frames
from tests.pipeline.actor.decoders import FILE_DECODERS

N = 20
H, W = 32, 64


def _write(path, frames, rotation: int | None) -> str:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "18", "g": "8", "bf": "2"}
        if rotation is not None:
            stream.set_display_rotation(rotation)  # degrees counter-clockwise, as FFmpeg's display matrix
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[np.ndarray, dict[int, str]]:
    """The stored frames (decoded from the unrotated file) and one file per rotation, same stream otherwise."""
    folder = tmp_path_factory.mktemp("rot")
    frames = synthetic_frames(N, height=H, width=W, seed=5)
    plain = _write(folder / "plain.mp4", frames, None)
    with open_video(plain, decoder="pyav") as src:
        stored = np.stack(list(src.iter_frames(range(N))))
    return stored, {r: _write(folder / f"rot{r}.mp4", frames, r) for r in (90, 180, 270)}


@pytest.mark.parametrize("rotation,turns", [(90, 1), (180, 2), (270, 3)])
@pytest.mark.parametrize("decoder", FILE_DECODERS)
def test_every_decoder_gives_the_displayed_orientation(videos, decoder, rotation, turns):
    stored, files = videos
    expected = np.stack([np.rot90(f, turns) for f in stored])  # turned counter-clockwise, as players show it
    with open_video(files[rotation], decoder=decoder) as src:
        assert (src.height, src.width) == expected.shape[1:3] == ((W, H) if rotation != 180 else (H, W))
        np.testing.assert_array_equal(np.stack(list(src.iter_frames(range(N)))), expected)
        backward = list(range(N - 1, -1, -3))
        np.testing.assert_array_equal(np.stack(list(src.iter_frames(backward))), expected[backward])
