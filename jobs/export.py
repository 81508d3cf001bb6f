"""Masklets of a propagation run in other tools' formats: ``python -m jobs.export prefix=URI format=…``
(davis, sav_png, ytvis, yolo; see ``pipeline.dataset.export``)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.dataset.export import EXPORT_FORMATS, YtvisWriter, export_masklets
from pipeline.dataset.predictions import each_video, find_predictions, read_prediction, select_videos
from pipeline.io.storage import join_uri


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Export every selected video; a video that fails is reported and the others go on (exit 1 at the end)."""
    so = OmegaConf.to_container(cfg, resolve=True)["storage_options"]
    if cfg.format not in EXPORT_FORMATS:
        raise SystemExit(f"format: must be one of {', '.join(EXPORT_FORMATS)}, got {cfg.format!r}")
    out = cfg.out or join_uri(cfg.prefix, f"export_{cfg.format}")
    try:
        sources = select_videos(find_predictions(cfg.prefix, so), cfg.videos, cfg.prefix)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    if cfg.format == "ytvis":
        writer = YtvisWriter(out, so)
        failed = each_video(sources, lambda v, uri: f"{writer.add(read_prediction(uri, v, so))} objects", "export")
        if writer.videos:
            out = writer.finish()
    else:
        failed = each_video(
            sources, lambda v, uri: f"{export_masklets(read_prediction(uri, v, so), out, cfg.format, so)} files",
            "export")
    print(f"exported {len(sources) - failed} videos to {out} ({cfg.format}); {failed} failed")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
