"""Propagate manifest prompts through whole videos on Ray: ``python -m jobs.propagate key=value ...``.

The Hydra config (conf/config.yaml) is read here, once, and handed to ``pipeline.driver`` as plain values. No model
is built in this process: the workers build theirs (and the official package's own Hydra never meets ours).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.driver import EXIT_BAD_INPUT, run
from pipeline.specs import ClusterSpec, DataSpec, JobSpec, ModelSpec, OutputSpec, SpecError


SECRET_KEYS = frozenset({"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                         "aws_session_token"})


def redacted(value: Any) -> Any:
    """``value`` with credentials (s3fs ``key``/``secret``/``token``, ...) replaced, for what the job records."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k in SECRET_KEYS and v is not None else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def job_spec(cfg: DictConfig) -> JobSpec:
    """The resolved config as the driver's typed spec; the recorded copy has its credentials redacted."""
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    recorded = redacted(c)
    return JobSpec(
        model=ModelSpec(**c["model"]), session=c["session"], data=DataSpec(**c["data"]),
        output=OutputSpec(**c["output"]), cluster=ClusterSpec(**c["cluster"]),
        num_shards=c["sharding"]["num_shards"], shard_id=c["sharding"]["shard_id"], log_every_s=c["log_every_s"],
        config=recorded, config_yaml=OmegaConf.to_yaml(recorded),
    )


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        spec = job_spec(cfg)
    except SpecError as exc:
        logging.getLogger("jobs.propagate").error("%s", exc)
        sys.exit(EXIT_BAD_INPUT)
    status = run(spec)
    if status == 0:
        return
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # let the other sweep points run; Hydra reports this one
        raise RuntimeError(f"propagate job ended with status {status} (see the log above)")
    sys.exit(status)


if __name__ == "__main__":
    main()
