"""J&F of predicted masklets against ground truth: ``python -m jobs.evaluate pred=URI gt=URI``.

Writes ``eval_objects.csv`` and ``eval_videos.csv``; the last line printed is ``J&F <x> J <y> F <z>`` (percent).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.dataset.evaluate import evaluate_dataset, objects_csv, videos_csv
from pipeline.io.storage import join_uri, write_bytes

log = logging.getLogger("evaluate")


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Evaluate, write the CSVs, print the global scores; exit 1 if any video failed."""
    so = OmegaConf.to_container(cfg, resolve=True)["storage_options"]
    report = evaluate_dataset(
        cfg.gt, cfg.pred, so, skip_first_last=bool(cfg.skip_first_last), strict=bool(cfg.strict),
        frame_step=int(cfg.frame_step), ray_address=cfg.cluster.address, num_cpus=cfg.cluster.num_cpus,
    )
    out = cfg.out or cfg.pred
    write_bytes(join_uri(out, "eval_objects.csv"), objects_csv(report.scores).encode(), so)
    write_bytes(join_uri(out, "eval_videos.csv"), videos_csv(report.scores).encode(), so)
    for video_id in report.missing:
        log.warning("video %s: no prediction, not scored", video_id)
    for video_id, reason in report.failed.items():
        print(f"FAILED {video_id}: {reason}")
    videos = len({s.video_id for s in report.scores})
    print(f"{len(report.scores)} objects in {videos} videos; {len(report.failed)} failed, "
          f"{len(report.missing)} without prediction; CSVs in {out}")
    jf, j, f = report.means()
    print(f"J&F {jf} J {j} F {f}")
    if report.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
