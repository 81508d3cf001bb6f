"""Propagate manifest prompts through whole videos on Ray: ``python -m jobs.propagate key=value ...``; with
``prompts=auto`` (or ``manifest+auto``) the videos' objects are discovered automatically (pipeline.actor.discovery).

The Hydra config (conf/config.yaml) is read here, once, validated, and handed to ``pipeline.driver.job`` as plain
values; a value out of range is refused with one line naming its key (exit 2) before Ray starts or anything is
written. No model is built in this process: the workers build theirs (and the official package's own Hydra never
meets ours). Exit status: 0 every video done, 1 some failed, 2 refused before any work, 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from jobs.redaction import redacted, scrub, secret_values
from pipeline.driver.job import EXIT_BAD_INPUT, EXIT_FAILED_VIDEOS, run
from pipeline.specs import AutoSpec, ClusterSpec, DataSpec, JobSpec, ModelSpec, OutputSpec, SpecError

log = logging.getLogger("jobs.propagate")
_worst_status = 0  # of the sweep points run by this process (multirun)


def job_spec(cfg: DictConfig) -> JobSpec:
    """The resolved config as the driver's typed spec (validated); the recorded copy has its credentials redacted."""
    try:
        c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise SpecError(f"{exc}".splitlines()[0]) from exc
    recorded = redacted(c)
    try:
        return JobSpec(
            model=ModelSpec(**c["model"]), session=c["session"], data=DataSpec(**c["data"]),
            output=OutputSpec(**c["output"]), cluster=ClusterSpec(**c["cluster"]),
            auto=AutoSpec(**c["auto"]) if "auto" in c else None,
            num_shards=c["sharding"]["num_shards"], shard_id=c["sharding"]["shard_id"],
            log_every_s=c["log_every_s"], config=recorded, config_yaml=OmegaConf.to_yaml(recorded),
        )
    except TypeError as exc:  # an unknown key in a group
        raise SpecError(f"unknown config key: {exc}") from exc


def _propagate(cfg: DictConfig) -> int:
    secrets = secret_values(OmegaConf.to_container(cfg, resolve=False))
    try:
        spec = job_spec(cfg)
        return run(spec)
    except SpecError as exc:
        log.error("%s", scrub(str(exc), secrets))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.error("interrupted before any video started; re-run the same command")
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user, the traceback (scrubbed) in the job log
        log.debug("%s", scrub(traceback.format_exc(), secrets))
        log.error("propagate failed: %s", scrub(f"{type(exc).__name__}: {exc}", secrets).splitlines()[0])
        return EXIT_FAILED_VIDEOS


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    global _worst_status
    status = _propagate(cfg)
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # the other sweep points run; the process exits with the worst
        _worst_status = max(_worst_status, status)
        return
    sys.exit(status)


if __name__ == "__main__":
    main()
    sys.exit(_worst_status)
