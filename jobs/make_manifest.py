"""Prompt manifest from SA-V JSON or PNG mask folders (``annotations=…``) or from a tar shard of videos with their
SA-V annotations (``shard=…``): ``python -m jobs.make_manifest annotations=…|shard=… manifest=…``."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.dataset.manifest_maker import PromptSpec, manifest_bytes, manifest_from_annotations, manifest_from_shard
from pipeline.io.storage import write_bytes

log = logging.getLogger("make_manifest")


@hydra.main(config_path="../conf", config_name="make_manifest", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Read every annotated video under ``annotations`` (or in ``shard``), write ``manifest``, report skipped
    videos."""
    so = OmegaConf.to_container(cfg, resolve=True)["storage_options"]
    if (cfg.annotations is None) == (cfg.shard is None):
        raise SystemExit("give exactly one of annotations=URI (a folder) or shard=URI (a tar shard)")
    spec = PromptSpec(**OmegaConf.to_container(cfg.prompts, resolve=True))
    if cfg.shard is not None:
        try:
            rows, failed = manifest_from_shard(cfg.shard, spec, list(cfg.kinds), int(cfg.frame_step), so)
        except ValueError as e:
            raise SystemExit(f"shard: {e}") from e
    else:
        rows, failed = manifest_from_annotations(cfg.annotations, spec, cfg.video_uri, list(cfg.kinds),
                                                 int(cfg.frame_step), so)
    for video_id, reason in failed.items():
        log.error("skipped video %s: %s", video_id, reason)
    if not rows:
        log.error("no prompt rows from %s (%d videos skipped); nothing written", cfg.shard or cfg.annotations,
                  len(failed))
        sys.exit(1)
    write_bytes(cfg.manifest, manifest_bytes(rows), so)
    videos = {r["video_id"] for r in rows}
    print(f"wrote {cfg.manifest}: {len(rows)} rows, {len(videos)} videos, {len(failed)} skipped")


if __name__ == "__main__":
    main()
