"""Masks for a dataset of still images on Ray, boxes or clicks in, COCO out: ``python -m jobs.segment_images
key=value ...``; with ``prompts=auto`` every image's objects are found by the automatic mask generator.

The Hydra config (conf/segment_images.yaml over ``pipeline.image_specs.ImageJobConfig``: the groups model/, data/,
output/, cluster/ and prompts/ of propagate, plus ``images.*``) is read here once, validated, and handed to
``pipeline.driver.image_job`` as plain values (jobs/edge: one-line refusals, exit 2). Exit status: 0 every image
done, 1 some failed, 2 refused before any work, 130 interrupted.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from jobs.edge import Job
from jobs.redaction import redacted
from pipeline.driver.image_job import run_images
from pipeline.image_specs import ImageJobConfig, ImageJobSpec


def image_job_spec(cfg: DictConfig) -> ImageJobSpec:
    """The composed config as the driver's typed spec; the recorded copy has its credentials redacted."""
    config: ImageJobConfig = OmegaConf.to_object(cfg)
    recorded = redacted(OmegaConf.to_container(cfg, resolve=True))
    return ImageJobSpec(model=config.model, data=config.data, output=config.output, images=config.images,
                        cluster=config.cluster, num_shards=config.sharding.num_shards,
                        shard_id=config.sharding.shard_id, log_every_s=config.log_every_s, auto=config.auto,
                        config=recorded, config_yaml=OmegaConf.to_yaml(recorded))


JOB = Job("segment_images", "segment_images", ImageJobConfig, run_images, image_job_spec)

if __name__ == "__main__":
    JOB.main()
