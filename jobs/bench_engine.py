"""Benchmark: our video engine against the official SAM2VideoPredictor on the same weights, video and prompts.

    OMP_NUM_THREADS=1 python -m jobs.bench_engine                 # CPU: tiny at 256 and 512 px, 1 and 4 objects
    python -m jobs.bench_engine --device cuda                     # also 1024 px bf16, tiny and large

Both sides get random weights (the official builder's, copied into ours), a synthetic 24-frame video and one click
per object on frame 0. The official predictor reads a JPEG folder of the frames (its only frame input besides mp4);
ours streams the decoded frames. Timed: ``propagate_in_video`` vs ``VideoSession.propagate`` (seconds per frame);
init (official ``init_state``: load + normalise all frames, encode frame 0; ours: session creation) is reported
separately. On CPU use ``OMP_NUM_THREADS=1`` on a shared machine: more threads oversubscribe and add noise.

Threads, on CPU: ours runs the image encoder on a second thread (``overlap_encoder``), i.e. two threads of one
intra-op thread each. For fairness the official predictor is timed twice: with the process default (1 intra-op
thread under ``OMP_NUM_THREADS=1``) and with ``torch.set_num_threads(2)`` (both cores for every op). Ours is also
timed without the overlap ("serial"). Ratios are official s/f divided by ours (overlap) s/f: > 1 means we are faster.
The official package is imported lazily: comparing against it is this tool's purpose, no product code depends on it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sam2core.build import build_model
from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession

_SIZE_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


@dataclass
class BenchCase:
    model: str
    image_size: int
    num_objects: int
    dtype: str  # "float32" or "bfloat16"


@dataclass
class BenchResult:
    case: BenchCase
    official_init_s: float
    official_s_per_frame: float
    official_2t_s_per_frame: float  # official with torch.set_num_threads(2) (CPU; = official_s_per_frame on CUDA)
    ours_init_s: float
    ours_serial_s_per_frame: float  # overlap_encoder=False
    ours_s_per_frame: float
    max_abs_diff: float


def synthetic_frames(num_frames: int, size: int, num_objects: int) -> tuple[np.ndarray, list[list[float]]]:
    """A textured video with ``num_objects`` moving discs and a click on each disc in frame 0."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = np.stack([110 + 50 * np.sin(xx / 17 + c) * np.cos(yy / 23 - c) for c in range(3)], -1)
    centres = [(size * (0.3 + 0.4 * (i % 2)), size * (0.3 + 0.4 * (i // 2 % 2))) for i in range(num_objects)]
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        img = background.copy()
        for i, (cx, cy) in enumerate(centres):
            x0, y0 = cx + 0.6 * t * (-1) ** i, cy + 0.4 * t
            img[(xx - x0) ** 2 + (yy - y0) ** 2 <= (0.09 * size) ** 2] = (60 * i % 255, 200, 255 - 50 * i)
        frames[t] = img.clip(0, 255).astype(np.uint8)
    return frames, [[cx, cy] for cx, cy in centres]


def _official(name: str, image_size: int, device: str) -> torch.nn.Module:
    from sam2.build_sam import build_sam2_video_predictor

    prefix, size = name.split("_hiera_")
    config = f"configs/{prefix}/{prefix}_hiera_{_SIZE_SUFFIX[size]}.yaml"
    torch.manual_seed(0)
    return build_sam2_video_predictor(config, None, device=device, apply_postprocessing=False,
                                      hydra_overrides_extra=[f"++model.image_size={image_size}"])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_official(official: torch.nn.Module, folder: str, clicks: list[list[float]], device: str,
                   autocast: contextlib.AbstractContextManager) -> tuple[float, float, dict[int, torch.Tensor]]:
    """(init seconds, propagation seconds, masks per frame) of one official run over the JPEG folder."""
    with torch.inference_mode(), autocast:
        _sync(device)
        start = time.perf_counter()
        state = official.init_state(folder)
        _sync(device)
        init = time.perf_counter() - start
        for obj_id, click in enumerate(clicks):
            official.add_new_points_or_box(state, 0, obj_id, points=[click], labels=[1])
        _sync(device)
        start = time.perf_counter()
        masks = {t: m for t, _, m in official.propagate_in_video(state)}
        _sync(device)
        return init, time.perf_counter() - start, masks


def _time_ours(model: torch.nn.Module, frames: np.ndarray, clicks: list[list[float]], device: str,
               options: SessionOptions) -> tuple[float, float, dict[int, torch.Tensor]]:
    """(session creation seconds, propagation seconds, masks per frame) of one run of our engine."""
    _sync(device)
    start = time.perf_counter()
    session = VideoSession(model, ArrayFrameSource(frames), options)
    init = time.perf_counter() - start
    for obj_id, click in enumerate(clicks):
        session.add_points(0, obj_id, [click], [1])
    _sync(device)
    start = time.perf_counter()
    masks = {r.frame_idx: r.mask_logits for r in session.propagate()}
    _sync(device)
    return init, time.perf_counter() - start, masks


def run_case(case: BenchCase, num_frames: int, device: str) -> BenchResult:
    """Time both predictors on one case; also returns the largest |Δ logit| between their masks."""
    official = _official(case.model, case.image_size, device)
    ours = build_model(case.model, image_size=case.image_size, device=device)
    ours.load_state_dict(official.state_dict())
    frames, clicks = synthetic_frames(num_frames, case.image_size, case.num_objects)
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if case.dtype == "bfloat16"
                else contextlib.nullcontext())
    with tempfile.TemporaryDirectory() as folder:
        decoded = []
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(os.path.join(folder, f"{i}.jpg"), quality=95)
            with Image.open(os.path.join(folder, f"{i}.jpg")) as img:
                decoded.append(np.asarray(img.convert("RGB")))
        official_init, official_time, official_masks = _time_official(official, folder, clicks, device, autocast)
        official_2t_time = official_time
        if device == "cpu":
            threads = torch.get_num_threads()
            torch.set_num_threads(2)
            try:
                _, official_2t_time, _ = _time_official(official, folder, clicks, device, autocast)
            finally:
                torch.set_num_threads(threads)
    video = np.stack(decoded)
    _, serial_time, _ = _time_ours(ours, video, clicks, device, SessionOptions(dtype=case.dtype,
                                                                             overlap_encoder=False))
    ours_init, ours_time, our_masks = _time_ours(ours, video, clicks, device, SessionOptions(dtype=case.dtype))

    diff = max(float((official_masks[t][:, 0].float() - our_masks[t]).abs().max()) for t in official_masks)
    return BenchResult(case, official_init, official_time / num_frames, official_2t_time / num_frames, ours_init,
                       serial_time / num_frames, ours_time / num_frames, diff)


def default_cases(device: str) -> list[BenchCase]:
    cases = [BenchCase("sam2.1_hiera_tiny", size, n, "float32") for size in (256, 512) for n in (1, 4)]
    if device == "cuda":
        cases += [BenchCase(model, 1024, n, "bfloat16") for model in ("sam2.1_hiera_tiny", "sam2.1_hiera_large")
                  for n in (1, 4)]
    return cases


def format_table(results: list[BenchResult], device: str) -> str:
    header = (f"{'model':<20} {'size':>5} {'obj':>4} {'dtype':>9} | {'official s/f':>12} {'off 2T s/f':>10} | "
              f"{'ours serial':>11} {'ours s/f':>9} | {'off/ours':>8} {'off2T/ours':>10} | {'off init s':>10} "
              f"{'our init s':>10} | {'max|dlogit|':>11}")
    lines = [f"device={device} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
             f"torch intra-op threads={torch.get_num_threads()}; official 2T: torch.set_num_threads(2); "
             "ours: encoder thread + tracking thread (ours serial: overlap_encoder=False); "
             f"1-min load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", header, "-" * len(header)]
    for r in results:
        c = r.case
        lines.append(f"{c.model:<20} {c.image_size:>5} {c.num_objects:>4} {c.dtype:>9} | "
                     f"{r.official_s_per_frame:>12.4f} {r.official_2t_s_per_frame:>10.4f} | "
                     f"{r.ours_serial_s_per_frame:>11.4f} {r.ours_s_per_frame:>9.4f} | "
                     f"{r.official_s_per_frame / r.ours_s_per_frame:>8.2f} "
                     f"{r.official_2t_s_per_frame / r.ours_s_per_frame:>10.2f} | {r.official_init_s:>10.3f} "
                     f"{r.ours_init_s:>10.3f} | {r.max_abs_diff:>11.3g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--sizes", type=int, nargs="*", help="only these image sizes")
    parser.add_argument("--objects", type=int, nargs="*", help="only these object counts")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cases = [c for c in default_cases(args.device)
             if (not args.sizes or c.image_size in args.sizes) and (not args.objects or c.num_objects in args.objects)]
    results = []
    for case in cases:
        results.append(run_case(case, args.frames, args.device))
        print(format_table(results[-1:], args.device).splitlines()[-1], flush=True)
    print()
    print(format_table(results, args.device))


if __name__ == "__main__":
    main()
