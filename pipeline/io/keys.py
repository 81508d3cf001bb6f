"""Which video ids the output prefix's keys can hold, one rule for the manifest check and the prefix.

A video_id names files under the prefix (``{id}.json``, ``{id}.parquet``, and on local disks a
``.{name}.{12 hex}.tmp`` while one is written). So: no leading ``.`` (listings skip hidden files, so such a video
would never count as done), and short enough for a file name (255 bytes on local file systems, less the 26
characters of the longest such suffix).
"""

from __future__ import annotations

import re

VIDEO_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$"
MAX_VIDEO_ID_CHARS = 200
VIDEO_ID_RULE = f"[A-Za-z0-9._-], not starting with '.', at most {MAX_VIDEO_ID_CHARS} characters"
_VIDEO_ID = re.compile(VIDEO_ID_PATTERN)


def usable_video_id(video_id: str) -> bool:
    """Whether ``video_id`` can name files under an output prefix (``VIDEO_ID_RULE``)."""
    return bool(_VIDEO_ID.match(video_id)) and len(video_id) <= MAX_VIDEO_ID_CHARS
