"""Finding a job's predictions and walking them: the masklet files under an output prefix, or PNG folders.

The dataset tools (evaluate, render, export, report) all start here: which videos have predictions, which of them
were asked for, where their videos are (the manifest and data root the job recorded), and one loop that runs an
action per video, naming each failure and going on with the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from pipeline.dataset.annotations import read_png_video
from pipeline.plan.manifest import load_manifest
from pipeline.io.masklets import Masklets, read_masklets
from pipeline.plan.tasks import VideoTask
from pipeline.io.storage import exists, is_absolute_uri, join_uri, list_sizes, read_bytes

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


def is_masklet_file(uri: str) -> bool:
    """A job's masklet file (its ``frame_count`` is the video's), not a PNG folder (numbered by its file names)."""
    return uri.endswith(_MASKLET_EXTS)


def read_prediction(uri: str, video_id: str, storage_options: dict | None = None) -> Masklets:
    """Predicted masklets of one video from a masklet file or a PNG folder."""
    if is_masklet_file(uri):
        return read_masklets(uri, storage_options)
    return read_png_video(uri, storage_options, video_id)


@dataclass
class JobData:
    """Where a job's videos are: its manifest, the base of relative video URIs, and their storage options."""

    manifest: str | None
    root: str | None
    storage_options: dict | None = None


def job_config(prefix: str, sources: dict[str, str], storage_options: dict | None = None) -> dict:
    """The resolved config the job recorded: a masklet file's ``provenance.config``, else the one in
    ``_state/provenance.json``, else ``{prefix}/config.yaml`` (``{}`` when none is there, e.g. for PNG folders)."""
    for uri in list(sources.values())[:1]:
        if uri.endswith(_MASKLET_EXTS):
            config = read_masklets(uri, storage_options).provenance.get("config")
            if isinstance(config, dict):
                return config
    shard_configs = sorted(n for n in list_sizes(prefix, storage_options)
                           if n.startswith("config-") and n.endswith(".yaml"))
    for name in ("_state/provenance.json", "config.yaml", *shard_configs):
        uri = join_uri(prefix, name)
        if exists(uri, storage_options):
            loaded = yaml.safe_load(read_bytes(uri, storage_options))   # JSON is YAML too
            if isinstance(loaded, dict) and name.endswith(".json"):
                loaded = loaded.get("config")
            if isinstance(loaded, dict):
                return loaded
    return {}


def job_data(prefix: str, sources: dict[str, str], storage_options: dict | None = None) -> JobData:
    """The manifest and data root of the job that wrote ``prefix`` (``None`` where it recorded none)."""
    data = job_config(prefix, sources, storage_options).get("data") or {}
    return JobData(data.get("manifest") or None, data.get("root") or None, data.get("storage_options"))


def resolve_data(prefix: str, sources: dict[str, str], manifest: str | None, data_root: str | None,
                 storage_options: dict | None = None) -> tuple[str | None, str | None, str]:
    """(manifest, data root, how they were found): the ones given, else the job's own (its recorded config) when
    neither is given."""
    if manifest is None and data_root is None:
        recorded = job_data(prefix, sources, storage_options)
        if recorded.manifest:
            return recorded.manifest, recorded.root, f"manifest {recorded.manifest} (from the job's config)"
    return manifest, data_root, f"manifest {manifest}" if manifest else f"data_root {data_root or '.'}"


def manifest_tasks(manifest: str, data_root: str | None, storage_options: dict | None = None) -> dict[str, VideoTask]:
    """video_id → task (resolved video URI and prompts) of a manifest."""
    return {t.video_id: t for t in load_manifest(manifest, data_root or None, storage_options).tasks}


def locate_videos(video_ids: list[str], manifest: str | None, data_root: str | None, pattern: str,
                  storage_options: dict | None) -> dict[str, str]:
    """video_id → video URI, from the manifest's video_uri column or from ``pattern`` (both under ``data_root``).

    Videos the manifest does not list are left out (the caller names them)."""
    if manifest:
        tasks = manifest_tasks(manifest, data_root, storage_options)
        return {v: tasks[v].video_uri for v in video_ids if v in tasks}
    uris = {v: pattern.format(video_id=v) for v in video_ids}
    return {v: u if is_absolute_uri(u) or not data_root else join_uri(data_root, u) for v, u in uris.items()}


def videos_of(prefix: str, sources: dict[str, str], manifest: str | None, data_root: str | None, pattern: str,
              storage_options: dict | None) -> tuple[dict[str, str], str]:
    """(video_id → video URI, where that came from): the manifest/data_root given, else the job's own (its
    recorded config), else ``pattern`` under ``data_root``."""
    manifest, data_root, where = resolve_data(prefix, sources, manifest, data_root, storage_options)
    if not manifest:
        where = f"pattern {pattern!r} under {data_root or '.'}"
    return locate_videos(list(sources), manifest, data_root, pattern, storage_options), where
