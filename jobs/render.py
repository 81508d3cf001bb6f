"""Masklets over their videos as mp4 + contact sheet: ``python -m jobs.render prefix=URI``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.dataset.predictions import each_video, find_predictions, read_prediction, select_videos, videos_of
from pipeline.dataset.render import SheetOptions, pick_positions, render_sheet, render_video
from pipeline.actor.decoding import open_video
from pipeline.io.storage import join_uri, write_bytes

FOLDER_FPS = 24.0  # frame folders carry no rate; SA-V videos are 24 fps


def sheet_options(cfg: DictConfig) -> SheetOptions:
    """The contact sheet's options from the ``sheet`` group (frames: a count or a list of frame indices)."""
    sheet = OmegaConf.to_container(cfg.sheet, resolve=True)
    frames = sheet["frames"]
    if not (isinstance(frames, int) or (isinstance(frames, list) and all(isinstance(f, int) for f in frames))):
        raise SystemExit(f"sheet.frames: a count or a list of frame indices, got {frames!r}")
    for key in ("columns", "width"):
        if not isinstance(sheet[key], int) or sheet[key] < 1:
            raise SystemExit(f"sheet.{key}: a positive integer, got {sheet[key]!r}")
    return SheetOptions(frames, sheet["columns"], sheet["width"], int(sheet["gap"]), float(cfg.alpha))


@hydra.main(config_path="../conf", config_name="render", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Render every selected video; one that fails is reported and the others go on (exit 1 at the end)."""
    so = OmegaConf.to_container(cfg, resolve=True)["storage_options"]
    out = cfg.out or join_uri(cfg.prefix, "render")
    opts = sheet_options(cfg)
    try:
        sources = select_videos(find_predictions(cfg.prefix, so), cfg.videos, cfg.prefix)
        videos, where = videos_of(cfg.prefix, sources, cfg.manifest, cfg.data_root, cfg.video_uri, so)
    except (ValueError, OSError) as e:
        raise SystemExit(f"{cfg.prefix}: cannot locate the videos: {e}") from e

    def render(video_id: str, uri: str) -> str:
        if video_id not in videos:
            raise ValueError(f"not in {where}")
        m = read_prediction(uri, video_id, so)
        with open_video(videos[video_id], so, decoder=cfg.decoder) as video:
            if cfg.mp4:
                fps = cfg.fps or video.fps or FOLDER_FPS
                mp4, sheet = render_video(m, video.iter_frames(m.frame_indices), fps, opts.alpha, opts.frames,
                                          opts.columns, opts.width, opts.gap)
                write_bytes(join_uri(out, f"{video_id}.mp4"), mp4, so)
            else:
                picks = [m.frame_indices[p] for p in pick_positions(m, opts.frames)]
                sheet = render_sheet(m, video.iter_frames(picks), opts)
        write_bytes(join_uri(out, f"{video_id}_sheet.png"), sheet, so)
        return f"{len(m.frame_indices)} frames rendered" if cfg.mp4 else "contact sheet rendered"

    print(f"videos from {where}")
    failed = each_video(sources, render, "render")
    print(f"rendered {len(sources) - failed} videos to {out}; {failed} failed")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
