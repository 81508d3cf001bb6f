"""Folders of frames named by integer index (``00000.jpg`` …, the SA-V / DAVIS layout), local or on any fsspec
storage."""

from __future__ import annotations

import io
import re
from typing import Iterator, Sequence

import numpy as np

from pipeline.actor.decoding.source import VideoError, VideoSource, access_error, chunks
from pipeline.io.storage import filesystem, join_uri, list_sizes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_INT_NAME = re.compile(r"^(\d+)\.(jpe?g|png)$", re.IGNORECASE)


def frame_names(uri: str, names: list[str]) -> list[str]:
    """The frame file names among ``names``, in frame order (numeric); other files are ignored. Two files with one
    index (``00001.jpg`` and ``1.png``) are refused: which one is the frame is not for the reader to guess."""
    named: dict[int, str] = {}
    for name in sorted(names):
        m = _INT_NAME.match(name)
        if not m:
            continue
        index = int(m.group(1))
        if index in named:
            raise VideoError(f"{uri}: frames {named[index]} and {name} have the same index {index}; keep one")
        named[index] = name
    if not named:
        raise VideoError(f"{uri}: folder holds no frames named by integer ({', '.join(IMAGE_EXTENSIONS)})")
    return [named[i] for i in sorted(named)]


class FrameFolderSource(VideoSource):
    """Folder of JPEG/PNG frames named by integer (``00000.jpg`` …); frame i = i-th name in numeric order.

    The files of a chunk are fetched in one ``fs.cat`` call (concurrent requests on S3), then decoded with PIL.
    """

    def __init__(self, uri: str, storage_options: dict | None) -> None:
        self.uri = uri
        self._fs, folder = filesystem(uri, storage_options)
        self._paths = [join_uri(folder, name) for name in frame_names(uri, list(list_sizes(uri, storage_options)))]
        self.num_frames = len(self._paths)
        self.fps = None
        first = self._decode(0, self._fetch([0])[0])
        self.height, self.width = int(first.shape[0]), int(first.shape[1])

    def _fetch(self, indices: list[int]) -> list[bytes]:
        paths = [self._paths[i] for i in indices]
        try:
            got = self._fs.cat(paths, on_error="return")
        except Exception as e:
            raise access_error(self.uri, f"reading frames {indices[0]}..{indices[-1]}", e) from e
        out = []
        for i, p in zip(indices, paths):
            data = got.get(p) if isinstance(got, dict) else got
            if not isinstance(data, bytes):
                if isinstance(data, Exception):
                    raise access_error(self.uri, f"reading frame {i} ({p})", data) from data
                raise VideoError(f"{self.uri}: cannot read frame {i} ({p}): {data}")
            out.append(data)
        return out

    def _decode(self, index: int, data: bytes) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                frame = np.asarray(img.convert("RGB"))
        except Exception as e:
            raise VideoError(f"{self.uri}: cannot decode frame {index} ({self._paths[index]}): {e}") from e
        if hasattr(self, "height") and frame.shape[:2] != (self.height, self.width):
            raise VideoError(f"{self.uri}: frame {index} ({self._paths[index]}) is {frame.shape[1]}x{frame.shape[0]}"
                             f", frame 0 is {self.width}x{self.height}")
        return frame

    def iter_frames(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        for chunk in chunks(self._check_indices(indices)):
            for i, data in zip(chunk, self._fetch(chunk)):
                yield self._decode(i, data)
