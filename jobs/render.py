"""Masklets over their videos as mp4 + contact sheet: ``python -m jobs.render prefix=URI manifest=URI``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.dataset.predictions import each_video, find_predictions, read_prediction, select_videos
from pipeline.manifest import load_manifest
from pipeline.dataset.render import render_video
from pipeline.sources import open_video
from pipeline.storage import is_absolute_uri, join_uri, write_bytes

_FOLDER_FPS = 24.0  # frame folders carry no rate; SA-V videos are 24 fps

def locate_videos(video_ids: list[str], manifest: str | None, data_root: str, pattern: str,
                  storage_options: dict | None) -> dict[str, str]:
    """video_id → video URI, from the manifest's video_uri column or from ``pattern`` (both under ``data_root``)."""
    if manifest:
        tasks = load_manifest(manifest, data_root or None, storage_options).tasks
        return {t.video_id: t.video_uri for t in tasks if t.video_id in set(video_ids)}
    uris = {v: pattern.format(video_id=v) for v in video_ids}
    return {v: u if is_absolute_uri(u) or not data_root else join_uri(data_root, u) for v, u in uris.items()}

@hydra.main(config_path="../conf", config_name="render", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Render every selected video; one that fails is reported and the others go on (exit 1 at the end)."""
    so = OmegaConf.to_container(cfg, resolve=True)["storage_options"]
    out = cfg.out or join_uri(cfg.prefix, "render")
    try:
        sources = select_videos(find_predictions(cfg.prefix, so), cfg.videos, cfg.prefix)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    videos = locate_videos(list(sources), cfg.manifest, cfg.data_root, cfg.video_uri, so)

    def render(video_id: str, uri: str) -> str:
        if video_id not in videos:
            raise ValueError(f"not in manifest {cfg.manifest}")
        m = read_prediction(uri, video_id, so)
        with open_video(videos[video_id], so, decoder=cfg.decoder) as video:
            fps = cfg.fps or video.fps or _FOLDER_FPS
            mp4, sheet = render_video(m, video.iter_frames(m.frame_indices), fps, cfg.alpha, cfg.sheet.frames,
                                      cfg.sheet.columns, cfg.sheet.width)
        write_bytes(join_uri(out, f"{video_id}.mp4"), mp4, so)
        write_bytes(join_uri(out, f"{video_id}_sheet.png"), sheet, so)
        return f"{len(m.frame_indices)} frames rendered"

    failed = each_video(sources, render, "render")
    print(f"rendered {len(sources) - failed} videos to {out}; {failed} failed")
    if failed:
        sys.exit(1)

if __name__ == "__main__":
    main()
