"""Which frames a masklet file holds, in words: every frame, every k-th one, a clip."""

from __future__ import annotations

from pipeline.dataset.frames import describe_frames, frame_stride, ordinal


def test_stride_and_description() -> None:
    assert frame_stride(list(range(0, 483, 4))) == 4 and frame_stride(list(range(300, 601, 8))) == 8
    assert frame_stride([7]) == 1 and frame_stride(list(range(10))) == 1 and frame_stride([0, 8, 12]) == 4
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 112)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "112th"]
    assert describe_frames(list(range(483)), 483) == "483 frames"
    assert describe_frames(list(range(0, 483, 4)), 483) == "121 of 483 frames: every 4th, 0-480"
    assert describe_frames(list(range(300, 601, 4)), 900) == "76 of 900 frames: every 4th, 300-600"
    assert describe_frames(list(range(300, 601)), 900) == "301 of 900 frames: 300-600"
    assert describe_frames([], 900) == "0 of 900 frames"
