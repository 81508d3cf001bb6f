"""Helpers for the propagate job tests: manifests, prompts on synthetic videos, job overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.specs import ClusterSpec, DataSpec, JobSpec, ModelSpec, OutputSpec
from pipeline.plan.manifest import MANIFEST_SCHEMA
from pipeline.io.rle import decode_rle, encode_rle
from pipeline.actor.decoding import open_video
from pipeline.io.storage import write_bytes
from sam2core.build import build_model
from sam2core.video import SessionOptions, VideoSession
from tests.helpers import make_video, synthetic_frames

REPO = Path(__file__).resolve().parents[3]
IMAGE_SIZE = 128
MODEL = "sam2.1_hiera_tiny"


def prompt_row(video_id: str, video_uri: str, obj_id: int, frame_idx: int, *, points=None, labels=None, box=None,
               mask=None) -> dict:
    """One manifest row (see DESIGN.md) with the given prompt."""
    if mask is not None:
        mask = encode_rle(mask)
    return {"video_id": video_id, "video_uri": video_uri, "obj_id": obj_id, "frame_idx": frame_idx,
            "points": points, "point_labels": labels, "box": box, "mask": mask}


def write_manifest(rows: list[dict], uri: str, storage_options: dict | None = None) -> str:
    """Write rows as a Parquet manifest to any fsspec URI; returns the URI."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), sink)
    write_bytes(uri, sink.getvalue().to_pybytes(), storage_options)
    return uri


def square_mask(frames: np.ndarray, t: int) -> np.ndarray:
    """Where tests.helpers.synthetic_frames drew its moving square on frame t."""
    return np.all(frames[t] == (250, 250, 30), axis=-1)


def prompts_for(video_id: str, uri: str, frames: np.ndarray, kind: str) -> list[dict]:
    """Prompts on the moving square of ``synthetic_frames``: a click, a box, or a mask (on frame 0), plus a second
    object given by a click on the background (so every video has two objects)."""
    m = square_mask(frames, 0)
    ys, xs = np.nonzero(m)
    if kind == "points":
        first = prompt_row(video_id, uri, 0, 0, points=[[float(xs.mean()), float(ys.mean())]], labels=[1])
    elif kind == "box":
        first = prompt_row(video_id, uri, 0, 0, box=[float(xs.min()), float(ys.min()), float(xs.max() + 1),
                                                      float(ys.max() + 1)])
    else:
        first = prompt_row(video_id, uri, 0, 0, mask=m)
    h, w = frames.shape[1:3]
    return [first, prompt_row(video_id, uri, 1, 0, points=[[w - 4.0, h - 4.0]], labels=[1])]


def point_videos(root: Path, n: int = 3, frames: int = 8, seed: int = 10) -> tuple[str, list[dict]]:
    """``n`` mp4 files ``videos/v{i}.mp4`` under ``root`` (64×96 synthetic frames) with point prompts, and the manifest
    of them: its path and its rows."""
    rows = []
    for i in range(n):
        f = synthetic_frames(frames, 64, 96, seed=seed + i)
        make_video(root / "videos" / f"v{i}.mp4", f)
        rows += prompts_for(f"v{i}", f"videos/v{i}.mp4", f, "points")
    return write_manifest(rows, str(root / "manifest.parquet")), rows


def job_overrides(manifest: str, root: str, output: str, address: str, **extra: object) -> list[str]:
    """Hydra overrides for a small, fast, deterministic run on the shared cluster."""
    base = {"model": MODEL, "model.checkpoint": "random", "model.image_size": IMAGE_SIZE, "model.device": "cpu",
            "model.dtype": "float32", "data.manifest": manifest, "data.root": root, "output.uri": output,
            "cluster.address": address, "cluster.num_workers": 1, "log_every_s": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def job_spec(manifest: str, root: str, output: str, address: str, *, decoder: str = "pyav",
             storage_options: dict | None = None, overwrite: bool = False, model: str = MODEL,
             session: dict | None = None, output_options: dict | None = None, device: str = "cpu",
             **cluster: object) -> JobSpec:
    """The same small run as ``job_overrides``, as a spec for ``pipeline.driver.run`` in this process."""
    return JobSpec(
        model=ModelSpec(name=model, checkpoint="random", image_size=IMAGE_SIZE, device=device, dtype="float32"),
        session=session or {},
        data=DataSpec(name="test", manifest=manifest, root=root, decoder=decoder, storage_options=storage_options),
        output=OutputSpec(**{"uri": output, "overwrite": overwrite, "storage_options": storage_options,
                             **(output_options or {})}),
        cluster=ClusterSpec(address=address, **{"num_workers": 1, **cluster}),
        num_shards=1, shard_id=0, log_every_s=2,
    )


def direct_masks(video_uri: str, prompts: list[dict], storage_options: dict | None = None,
                 decoder: str = "pyav") -> dict[int, np.ndarray]:
    """Masks [n_obj, H, W] per frame from sam2core used directly (same seed, size and options as the job)."""
    torch.manual_seed(0)
    model = build_model(MODEL, None, image_size=IMAGE_SIZE)
    source = open_video(video_uri, storage_options, decoder=decoder)
    try:
        session = VideoSession(model, source, SessionOptions(dtype="float32"))
        for p in sorted(prompts, key=lambda p: (p["frame_idx"], p["obj_id"])):
            if p["mask"] is not None:
                session.add_mask(p["frame_idx"], p["obj_id"], decode_rle(p["mask"]))
            else:
                session.add_points(p["frame_idx"], p["obj_id"], points=p["points"], labels=p["point_labels"],
                                   box=p["box"])
        return {r.frame_idx: (r.mask_logits > 0).numpy() for r in session.propagate(direction="both")}
    finally:
        source.close()


def decoded(masklets) -> dict[int, np.ndarray]:
    """Masks [n_obj, H, W] per frame of a Masklets object."""
    return {f: np.stack([decode_rle(r) for r in rles]) for f, rles in zip(masklets.frame_indices, masklets.rles)}
