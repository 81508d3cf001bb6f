"""Video-engine oracle harness: synthetic videos, one prompt script run through the official predictor and ours.

A case is a list of prompt steps plus propagation calls. The official predictor reads a JPEG folder; ours gets the
same decoded pixels (the JPEGs read back), so both see identical uint8 frames.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession


def synthetic_video(num_frames: int, height: int = 128, width: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth textured background with three coloured shapes moving slowly: uint8 [N,H,W,3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        96 + 40 * np.sin(xx / 9.0 + c) * np.cos(yy / 13.0 - c) for c in range(3)
    ], axis=-1)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    shapes = [((0.3, 0.35), (0.012, 0.008), 0.14, (230, 40, 40)),
              ((0.65, 0.6), (-0.01, 0.006), 0.11, (40, 220, 60)),
              ((0.5, 0.25), (0.004, 0.012), 0.09, (40, 60, 235))]
    for t in range(num_frames):
        img = base + rng.normal(0, 3, base.shape)
        for (cy, cx), (vy, vx), r, color in shapes:
            y0, x0 = (cy + vy * t) * height, (cx + vx * t) * width
            inside = ((yy - y0) / (r * height)) ** 2 + ((xx - x0) / (r * width)) ** 2 <= 1.0
            img[inside] = color
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def shape_center(t: int, which: int, height: int = 128, width: int = 128) -> tuple[float, float]:
    """(x, y) pixel centre of shape ``which`` on frame ``t`` of ``synthetic_video``."""
    (cy, cx), (vy, vx) = [((0.3, 0.35), (0.012, 0.008)), ((0.65, 0.6), (-0.01, 0.006)),
                          ((0.5, 0.25), (0.004, 0.012))][which][:2]
    return (cx + vx * t) * width, (cy + vy * t) * height


def shape_mask(t: int, which: int, height: int = 128, width: int = 128) -> np.ndarray:
    """Bool mask of shape ``which`` on frame ``t``."""
    radius = (0.14, 0.11, 0.09)[which]
    x0, y0 = shape_center(t, which, height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy - y0) / (radius * height)) ** 2 + ((xx - x0) / (radius * width)) ** 2 <= 1.0


def jpeg_roundtrip(frames: np.ndarray, folder: str) -> np.ndarray:
    """Write frames as ``<i>.jpg`` (quality 95) and return them decoded again, as the official loader sees them."""
    decoded = []
    for i, frame in enumerate(frames):
        path = os.path.join(folder, f"{i}.jpg")
        Image.fromarray(frame).save(path, quality=95)
        with Image.open(path) as img:
            decoded.append(np.asarray(img.convert("RGB")))
    return np.stack(decoded)


@dataclass
class Case:
    """Prompt steps: ("points", frame, obj, points, labels, box, clear_old) or ("mask", frame, obj, mask), and
    ("propagate", start, direction, max_frames) calls, in order."""

    steps: list[tuple]
    num_frames: int = 16
    height: int = 128
    width: int = 128
    name: str = "sam2.1_hiera_tiny"
    image_size: int = 128
    predictor_kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    max_logit_diff: float | None = 1e-3
    weights_seed: int = 2  # seed 2: objects present, ~40% of the frame (2.1 tiny, 128 px)


@dataclass
class Outcome:
    """Per propagation call: frame -> logits [n_obj,H,W] (the last value yielded for that frame), plus prompt echoes."""

    echoes: list[np.ndarray]
    passes: list[dict[int, np.ndarray]]


def run_official(predictor: Any, folder: str, case: Case) -> Outcome:
    """Run the case through the official ``SAM2VideoPredictor`` (propagate = forward and/or reverse calls)."""
    state = predictor.init_state(folder)
    echoes, passes = [], []
    for step in case.steps:
        kind = step[0]
        if kind == "points":
            _, frame, obj, points, labels, box, clear_old = step
            _, _, masks = predictor.add_new_points_or_box(state, frame, obj, points=points, labels=labels, box=box,
                                                          clear_old_points=clear_old)
            echoes.append(masks[:, 0].float().cpu().numpy())
        elif kind == "mask":
            _, frame, obj, mask = step
            _, _, masks = predictor.add_new_mask(state, frame, obj, mask)
            echoes.append(masks[:, 0].float().cpu().numpy())
        else:
            _, start, direction, max_frames = step
            out: dict[int, np.ndarray] = {}
            for reverse in {"forward": [False], "backward": [True], "both": [False, True]}[direction]:
                for t, _, masks in predictor.propagate_in_video(state, start_frame_idx=start,
                                                                max_frame_num_to_track=max_frames,
                                                                reverse=reverse):
                    out[t] = masks[:, 0].float().cpu().numpy()
            passes.append(out)
    return Outcome(echoes, passes)


def run_ours(model: Any, frames: np.ndarray, case: Case, **extra_options: Any) -> tuple[Outcome, VideoSession]:
    """Run the case through our ``VideoSession`` (each frame must be yielded exactly once per call)."""
    session = VideoSession(model, ArrayFrameSource(frames), SessionOptions(**{**case.options, **extra_options}))
    echoes, passes = [], []
    for step in case.steps:
        kind = step[0]
        if kind == "points":
            _, frame, obj, points, labels, box, clear_old = step
            echoes.append(session.add_points(frame, obj, points, labels, box, clear_old).mask_logits.cpu().numpy())
        elif kind == "mask":
            _, frame, obj, mask = step
            echoes.append(session.add_mask(frame, obj, mask).mask_logits.cpu().numpy())
        else:
            _, start, direction, max_frames = step
            out: dict[int, np.ndarray] = {}
            for result in session.propagate(start, direction, max_frames):
                assert result.frame_idx not in out, f"frame {result.frame_idx} yielded twice"
                out[result.frame_idx] = result.mask_logits.cpu().numpy()
            passes.append(out)
    return Outcome(echoes, passes), session


@dataclass
class Comparison:
    min_iou: float
    max_abs_diff: float
    object_frames: int
    present_fraction: float


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare(official: Outcome, ours: Outcome) -> Comparison:
    """Min IoU over every object-frame (echoes and propagated frames) and the largest |Δ logit|."""
    pairs = list(zip(official.echoes, ours.echoes))
    assert len(official.passes) == len(ours.passes)
    for off, mine in zip(official.passes, ours.passes):
        assert sorted(off) == sorted(mine), f"frames differ: {sorted(off)} vs {sorted(mine)}"
        pairs += [(off[t], mine[t]) for t in sorted(off)]
    ious, diffs, present = [], [], []
    for off, mine in pairs:
        assert off.shape == mine.shape, (off.shape, mine.shape)
        diffs.append(float(np.abs(off - mine).max()))
        for o in range(off.shape[0]):
            ious.append(mask_iou(off[o] > 0, mine[o] > 0))
            present.append(bool((off[o] > 0).any()))
    return Comparison(min(ious), max(diffs), len(ious), float(np.mean(present)))


_ORACLES: dict[tuple, tuple] = {}


def oracle_pair(name: str, image_size: int, seed: int = 0, **predictor_kwargs: Any) -> tuple[Any, Any]:
    """(official predictor, our model with its weights), built once per configuration for the test session;
    constant-initialised parameters are jittered so they matter."""
    from tests.oracle import official_predictor, ours_from_official, randomize_constant_params

    key = (name, image_size, seed, tuple(sorted(predictor_kwargs.items())))
    if key not in _ORACLES:
        official, _ = official_predictor(name, image_size, seed, **predictor_kwargs)
        randomize_constant_params(official, seed=seed)  # exercise zero/one-initialised parameters too
        _ORACLES[key] = (official, ours_from_official(official.state_dict(), name, image_size))
    return _ORACLES[key]


def run_case(case: Case, seed: int = 0) -> tuple[Comparison, Outcome, Outcome]:
    """The case through both predictors on the same decoded frames; returns the comparison and both outcomes."""
    official, model = oracle_pair(case.name, case.image_size, case.weights_seed, **case.predictor_kwargs)
    frames = synthetic_video(case.num_frames, case.height, case.width, seed)
    with tempfile.TemporaryDirectory() as folder:
        decoded = jpeg_roundtrip(frames, folder)
        with torch.inference_mode():
            off = run_official(official, folder, case)
    mine, _ = run_ours(model, decoded, case)
    return compare(off, mine), off, mine
