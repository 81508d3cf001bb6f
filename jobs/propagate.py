"""Propagate manifest prompts through whole videos on Ray: ``python -m jobs.propagate key=value ...``; with
``prompts=auto`` (or ``manifest+auto``) the videos' objects are discovered automatically (pipeline.actor.discovery).

The Hydra config (conf/config.yaml over ``pipeline.specs.JobConfig``) is read here, once, validated, and handed to
``pipeline.driver.job`` as plain values; a value out of range is refused with one line naming its key (exit 2)
before Ray starts or anything is written (jobs/edge). No model is built in this process: the workers build theirs
(and the official package's own Hydra never meets ours). Exit status: 0 every video done, 1 some failed, 2 refused
before any work, 130 interrupted.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from jobs.edge import Job
from jobs.redaction import redacted
from pipeline.driver.job import run
from pipeline.specs import JobConfig, JobSpec


def job_spec(cfg: DictConfig) -> JobSpec:
    """The composed config as the driver's typed spec (every group's spec checked); the recorded copy of the
    resolved config has its credentials redacted."""
    config: JobConfig = OmegaConf.to_object(cfg)
    recorded = redacted(OmegaConf.to_container(cfg, resolve=True))
    return JobSpec(model=config.model, session=config.session, data=config.data, output=config.output,
                   cluster=config.cluster, auto=config.auto, num_shards=config.sharding.num_shards,
                   shard_id=config.sharding.shard_id, log_every_s=config.log_every_s, config=recorded,
                   config_yaml=OmegaConf.to_yaml(recorded))


JOB = Job("propagate", "config", JobConfig, run, job_spec)

if __name__ == "__main__":
    JOB.main()
