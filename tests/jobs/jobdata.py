"""Shared data of the jobs tests: the SA-V example annotations and a PNG writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SAV_EXAMPLE = REPO / "tests" / "data" / "sav_example"


def write_png(path: Path, arr: np.ndarray, palette: bool = True) -> None:
    """A uint8 label image as a palette (or greyscale) PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8))
    if palette:
        img.putpalette([v for i in range(256) for v in (i * 40 % 256, i * 90 % 256, i * 150 % 256)])
    img.save(path)
