"""Prompt manifest from SA-V JSON or PNG mask folders (``annotations=…``) or from a tar shard of videos with their
SA-V annotations (``shard=…``): ``python -m jobs.make_manifest annotations=…|shard=… manifest=…``; an image
manifest from a COCO detection file (``coco=… image_root=…``: a box prompt per annotation, categories carried)."""

from __future__ import annotations

import logging

from jobs.edge import EXIT_FAILED, EXIT_OK, Job
from pipeline.dataset.coco_manifest import coco_manifest, image_manifest_bytes
from pipeline.dataset.manifest_maker import manifest_bytes, manifest_from_annotations, manifest_from_shard
from pipeline.dataset.specs import MakeManifestSpec
from pipeline.io.storage import write_bytes
from pipeline.specs import SpecError

log = logging.getLogger("make_manifest")


def make_manifest(spec: MakeManifestSpec) -> int:
    """Read every annotated video under ``annotations`` (or in ``shard``), write ``manifest``, report skipped
    videos; exit 1 when no video gave a prompt row (nothing written)."""
    so = spec.storage_options
    if spec.coco is not None:
        return _from_coco(spec)
    if spec.shard is not None:
        try:
            rows, failed = manifest_from_shard(spec.shard, spec.prompts, spec.kinds, spec.annotation_step, so)
        except ValueError as e:
            raise SpecError(f"shard: {e}") from e
    else:
        rows, failed = manifest_from_annotations(spec.annotations, spec.prompts, spec.video_uri, spec.kinds,
                                                 spec.annotation_step, so)
    for video_id, reason in failed.items():
        log.error("skipped video %s: %s", video_id, reason)
    if not rows:
        log.error("no prompt rows from %s (%d videos skipped); nothing written", spec.shard or spec.annotations,
                  len(failed))
        return EXIT_FAILED
    write_bytes(spec.manifest, manifest_bytes(rows), so)
    print(f"wrote {spec.manifest}: {len(rows)} rows, {len(set(r['video_id'] for r in rows))} videos, "
          f"{len(failed)} skipped")
    return EXIT_OK


def _from_coco(spec: MakeManifestSpec) -> int:
    """The image manifest of a COCO detection file; exit 1 when no annotation gave a row (nothing written)."""
    try:
        made = coco_manifest(spec.coco, spec.image_root, spec.storage_options)
    except ValueError as e:
        raise SpecError(f"coco: {e}") from e
    for reason, count in sorted(made.skipped.items()):
        log.warning("skipped %d annotations: %s", count, reason)
    if not made.rows:
        log.error("no box in %s; nothing written", spec.coco)
        return EXIT_FAILED
    write_bytes(spec.manifest, image_manifest_bytes(made.rows), spec.storage_options)
    print(f"wrote {spec.manifest}: {len(made.rows)} objects, {made.num_images} images, "
          f"{sum(made.skipped.values())} annotations skipped")
    return EXIT_OK


JOB = Job("make_manifest", "make_manifest", MakeManifestSpec, make_manifest)

if __name__ == "__main__":
    JOB.main()
