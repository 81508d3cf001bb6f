"""HTML report of a propagation run: ``python -m jobs.report prefix=URI`` (pages under ``{prefix}/report``)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from jobs.render import sheet_options
from pipeline.dataset.predictions import (find_predictions, locate_videos, manifest_tasks, read_prediction,
                                          resolve_data, select_videos)
from pipeline.dataset.render import SheetOptions, pick_positions, render_sheet
from pipeline.dataset.report import write_report
from pipeline.io.masklets import Masklets
from pipeline.actor.decoding import open_video
from pipeline.io.storage import join_uri, list_sizes

log = logging.getLogger("report")


def _sheet(m: Masklets, uri: str | None, missing: str, opts: SheetOptions, decoder: str, so: dict | None) -> bytes:
    """The video's contact sheet, decoding only the frames it shows (``missing``: why there is no ``uri``)."""
    if uri is None:
        raise ValueError(missing)
    picks = [m.frame_indices[p] for p in pick_positions(m, opts.frames)]
    with open_video(uri, so, decoder=decoder) as video:
        return render_sheet(m, video.iter_frames(picks), opts)


@hydra.main(config_path="../conf", config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Write the report; videos whose sheet or masklets cannot be read are listed with the reason."""
    so = OmegaConf.to_container(cfg, resolve=True)["storage_options"]
    out = cfg.out or join_uri(cfg.prefix, "report")
    opts = sheet_options(cfg)
    found = find_predictions(cfg.prefix, so) if list_sizes(cfg.prefix, so) else {}
    if not found and not list_sizes(join_uri(cfg.prefix, "_state"), so):
        raise SystemExit(f"{cfg.prefix}: no masklets and no job state: not the output prefix of a jobs.propagate run")
    try:
        sources = select_videos(found, cfg.videos, cfg.prefix) if found else {}
        manifest, root, where = resolve_data(cfg.prefix, sources, cfg.manifest, cfg.data_root, so)
    except (ValueError, OSError) as e:
        raise SystemExit(f"{cfg.prefix}: {e}") from e
    tasks, missing = {}, "video not in the manifest"
    if manifest:
        try:
            tasks = manifest_tasks(manifest, root, so)
        except Exception as e:  # noqa: BLE001 - the job's own manifest may be gone: report without sheets
            if cfg.manifest:
                raise SystemExit(f"manifest: {e}") from e
            missing = f"the job's manifest cannot be read ({str(e).splitlines()[0]}); give manifest=URI"
            log.warning("no contact sheets: %s", missing)
    videos = ({v: t.video_uri for v, t in tasks.items()} if manifest
              else locate_videos(list(sources), None, root, cfg.video_uri, so))
    prompts: dict[str, dict[int, list[int]]] = {}
    for v, t in tasks.items():
        frames: dict[int, set[int]] = {}
        for p in t.prompts:
            frames.setdefault(p.obj_id, set()).add(p.frame_idx)
        prompts[v] = {o: sorted(f) for o, f in frames.items()}
    print(f"videos from {where}")
    index, rows = write_report(
        cfg.prefix, out, sources, lambda v, uri: read_prediction(uri, v, so),
        lambda m: _sheet(m, videos.get(m.video_id), missing, opts, cfg.decoder, so), prompts, so)
    failed = sum(r.failure is not None for r in rows)
    print(f"report of {len(rows)} videos ({failed} failed): {index}")


if __name__ == "__main__":
    main()
