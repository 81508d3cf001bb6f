"""The edges the video and image jobs share around their pool: before it, the checkpoint checked and the output
prefix claimed (what is wrong is ``Refused``: one line, exit 2, nothing written); after it, the claim checked and the
summary written under the prefix (or kept locally when the prefix cannot take it).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import replace
from typing import TypeVar

from pipeline.driver.provenance import RANDOM_CHECKPOINT, job_provenance
from pipeline.image_specs import ImageJobSpec
from pipeline.io.prefix import Sink
from pipeline.io.storage import is_absolute_uri
from pipeline.records import ProvenanceError
from pipeline.specs import JobSpec, ModelSpec
from sam2core.checkpoint import CheckpointError, CheckpointMismatch

log = logging.getLogger(__name__)

AnyJobSpec = TypeVar("AnyJobSpec", JobSpec, ImageJobSpec)


class Refused(Exception):
    """The job cannot start; the message is the one line the user reads."""


def with_absolute_paths(spec: AnyJobSpec) -> AnyJobSpec:
    """Relative local paths are taken from the driver's working directory (Ray workers have another one); a
    leading ``~`` is the home folder."""
    def absolute(uri: str) -> str:
        return uri if not uri or is_absolute_uri(uri) else os.path.abspath(os.path.expanduser(uri))

    model = spec.model
    if model.checkpoint != RANDOM_CHECKPOINT:
        model = replace(model, checkpoint=absolute(model.checkpoint))
    if model.cache_dir:
        model = replace(model, cache_dir=os.path.expanduser(model.cache_dir))
    data = replace(spec.data, manifest=absolute(spec.data.manifest), root=absolute(spec.data.root),
                   videos=None if spec.data.videos is None else absolute(spec.data.videos))
    return replace(spec, model=model, data=data, output=replace(spec.output, uri=absolute(spec.output.uri)))


def claim_prefix(sink: Sink, model: ModelSpec, session: dict, config: dict | None, overwrite: bool,
                 decoder: str | None, results: str) -> dict:
    """The job's provenance (its checkpoint fetched and checked against ``model``) with ``sink``'s prefix claimed
    for it (``Sink.claim``; the sink's writes are fenced by the claim from then on). Refused names the checkpoint
    or the prefix, and what to do; ``results`` names what the prefix holds ("masklets", "masks")."""
    try:
        provenance = job_provenance(model, session, config)
    except CheckpointMismatch as exc:
        raise Refused(f"{exc}; nothing was written") from exc
    except CheckpointError as exc:
        raise Refused(f"{exc} (the checkpoint must be readable before the job starts: pass a local file with "
                      f"model.checkpoint=/path/to/{model.name}.pt, or model.checkpoint=random)") from exc
    try:
        sink.claim(provenance, overwrite, decoder)
    except ProvenanceError as exc:
        raise Refused(f"{exc}: use another output.uri, or output.overwrite=true to replace those {results}") from exc
    except Exception as exc:  # noqa: BLE001 - any storage backend's error: unreachable, credentials refused
        raise Refused(f"output prefix {sink.uri} is not usable: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return provenance


def claim_lost(sink: Sink) -> bool:
    """Whether another job took the prefix over while this one ran (then said in one line): the job writes no
    summary there and exits 2. Storage that does not answer is not a lost claim (the summary falls back)."""
    try:
        held = sink.holds_claim()
    except Exception:  # noqa: BLE001 - storage down: writing the summary will tell
        return False
    if not held:
        log.error("%s was taken over by another job while this one ran (output.overwrite there); this job stopped "
                  "writing to it and wrote no summary", sink.uri)
    return not held


def finished(sink: Sink, shard: tuple[int, int]) -> bool:
    """Whether ``shard`` of this prefix ended with its summary; an unreadable marker just means: run and write the
    summary again."""
    try:
        return sink.finished(shard)
    except Exception:  # noqa: BLE001 - see the docstring
        return False


def write_summary(spec: JobSpec | ImageJobSpec, sink: Sink, summary: dict, shard: tuple[int, int]) -> bool:
    """The summary under the prefix; when that fails (storage down), under ``output.fallback_dir`` locally."""
    try:
        sink.write_summary(summary, spec.config_yaml, shard)
        return True
    except Exception as exc:  # noqa: BLE001 - storage down for good: keep the summary somewhere
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.output.uri).strip("_")
        tag = f"-{shard[0]}-of-{shard[1]}" if shard[1] > 1 else ""
        path = os.path.join(os.path.abspath(spec.output.fallback_dir), name, f"summary{tag}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump({**summary, "status": "failed", "unwritten_prefix": spec.output.uri}, f, indent=2,
                      sort_keys=True)
        log.error("could not write the summary under %s (%s: %s); it is at %s", spec.output.uri,
                  type(exc).__name__, exc, path)
        return False
