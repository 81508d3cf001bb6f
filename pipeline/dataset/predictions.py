"""Finding a job's predictions and walking them: the masklet files under an output prefix, or PNG folders.

The dataset tools (evaluate, render, export) all start here: which videos have predictions, which of them were
asked for, and one loop that runs an action per video, naming each failure and going on with the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipeline.dataset.annotations import read_png_video
from pipeline.masklets import Masklets, read_masklets
from pipeline.storage import join_uri, list_sizes

log = logging.getLogger(__name__)

_MASKLET_EXTS = (".json", ".parquet")


def find_predictions(pred: str, storage_options: dict | None = None) -> dict[str, str]:
    """video_id → prediction URI: masklet files under ``pred/masklets/``, else the PNG folders under ``pred``."""
    masklets_dir = join_uri(pred, "masklets")
    files = {n: s for n, s in list_sizes(masklets_dir, storage_options).items() if n.endswith(_MASKLET_EXTS)}
    if files:
        return {n.rsplit(".", 1)[0]: join_uri(masklets_dir, n) for n in sorted(files)}
    return {n: join_uri(pred, n) for n, size in sorted(list_sizes(pred, storage_options).items()) if size is None}


def select_videos(found: dict[str, str], wanted: list[str] | None, prefix: str) -> dict[str, str]:
    """The requested videos among those ``find_predictions`` found (all when ``wanted`` is None)."""
    if not found:
        raise ValueError(f"{prefix}: no predictions found (masklets/{{video_id}}.json|parquet or PNG folders)")
    if wanted is None:
        return found
    unknown = [v for v in wanted if v not in found]
    if unknown:
        raise ValueError(f"{prefix}: no predictions for videos {unknown}")
    return {v: found[v] for v in wanted}


def each_video(sources: dict[str, str], action: Callable[[str, str], str], what: str) -> int:
    """Run ``action(video_id, uri)`` (returns a log line) for every video; one that fails is logged by name and the
    others go on. Returns how many failed."""
    failed = 0
    for video_id, uri in sources.items():
        try:
            log.info("video %s: %s", video_id, action(video_id, uri))
        except Exception as e:  # noqa: BLE001 - one bad video must not stop the others
            log.error("video %s: %s failed: %s", video_id, what, e)
            failed += 1
    return failed


def read_prediction(uri: str, video_id: str, storage_options: dict | None = None) -> Masklets:
    """Predicted masklets of one video from a masklet file or a PNG folder."""
    if uri.endswith(_MASKLET_EXTS):
        return read_masklets(uri, storage_options)
    return read_png_video(uri, storage_options, video_id)
