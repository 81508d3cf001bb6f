"""Masklets of a propagation run as PNG masks: ``python -m jobs.export prefix=URI format=davis|sav_png``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.dataset.predictions import each_video, find_predictions, read_prediction, select_videos
from pipeline.dataset.export import EXPORT_FORMATS, export_masklets
from pipeline.storage import join_uri

@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Export every selected video; a video that fails is reported and the others go on (exit 1 at the end)."""
    so = OmegaConf.to_container(cfg, resolve=True)["storage_options"]
    if cfg.format not in EXPORT_FORMATS:
        raise SystemExit(f"format must be one of {EXPORT_FORMATS}, got {cfg.format!r}")
    out = cfg.out or join_uri(cfg.prefix, f"export_{cfg.format}")
    try:
        sources = select_videos(find_predictions(cfg.prefix, so), cfg.videos, cfg.prefix)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    failed = each_video(
        sources, lambda video_id, uri: f"{export_masklets(read_prediction(uri, video_id, so), out, cfg.format, so)} PNGs",
        "export")
    print(f"exported {len(sources) - failed} videos to {out} ({cfg.format}); {failed} failed")
    if failed:
        sys.exit(1)

if __name__ == "__main__":
    main()
