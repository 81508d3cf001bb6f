"""GPU acceptance: ``python -m benchmarks preset=gpu`` (the ``gpu`` section), one table and its JSON.

On a CUDA device (settings ``gpu.cuda``: 1024 px, bf16, one H100/H200 in about 8 minutes):
- parity: the smallest mask IoU per object-frame, ours (eager and compiled) against the official predictor under
  bf16 autocast, tiny and large, for every object count of the speed runs (same weights, pixels and box prompts);
- speed: object-frames/s of the official predictor eager and ``vos_optimized=True`` and of ours eager and compiled,
  tiny and large with 1, 4 and 16 objects, and the ratios of ours to ``vos_optimized`` (targets);
- memory: peak GPU memory allocated while propagating a short and a long video (growth target);
- FLOP/s: FLOPs of one tracked frame (image encoder + tracking of every object with a full memory, by torch's
  per-op FLOP formulas) times the frames/s of the fastest of ours, against the device's dense bf16 peak
  (datasheet, by device name).
Each stage's wall time is reported too (compiling and warm-up included), and the section's total against
``gpu.cuda.budget_s`` (8 minutes), so the first run on a new device shows what to trim.
Without one (settings ``gpu.cpu``) the same figures at tiny sizes, without the CUDA-only variants and with the
session's state bytes for memory: a smoke test of the command, in the test suite. Every measurement runs in a fresh
process (``harness``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from benchmarks import engine, memory
from benchmarks.harness import run_isolated
from benchmarks.report import Figure, figure

SECTION = "gpu"
# dense bf16 tensor-core peaks (datasheets, SXM parts), by a substring of torch.cuda.get_device_name()
BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def device_peak_flops(name: str) -> float | None:
    """The dense bf16 peak of the named device, None when it is not in the table."""
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in name), None)


def count_frame_flops(model_name: str, image_size: int, objects: int, device: str, dtype: str) -> float:
    """FLOPs of one tracked frame once the memory is full: its image encoding, the frame's memory-attention prefix
    and the tracking step of ``objects`` objects (all memory slots filled), as the engine runs them; runs in a fresh
    process. (Counted under ``no_grad``: dispatch modes do not see ops under ``inference_mode``.)"""
    import contextlib

    from sam2core.build import build_model
    from sam2core.video.tracker import TrackingStep, slot_layout

    torch.manual_seed(0)
    model = build_model(model_name, image_size=image_size, device=device)
    cfg = model.config
    side, slots = cfg.feat_size, len(slot_layout(1, cfg.num_maskmem))
    pointers = 1 + cfg.max_obj_ptrs_in_encoder - 1
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext())
    counter = _FlopCounter()
    with torch.no_grad(), autocast:
        images = torch.randn(1, 3, image_size, image_size, device=device)
        memory = torch.zeros(objects, slots, cfg.mem_dim, side, side, dtype=torch.bfloat16, device=device)
        packed = torch.ones(objects * (slots + 2 * pointers), device=device)
        ptrs = torch.zeros(objects, pointers, cfg.d_model, device=device)
        step = TrackingStep(model, stability_fallback=False)
        with counter:
            feats = model.encode_image(images)
            prefix = model.memory_prefix(feats.feat, feats.pos)
            step(prefix[0], prefix[1], feats.feat, feats.high_res[0], feats.high_res[1], memory, packed, ptrs)
    return float(counter.total)


class _FlopCounter(TorchDispatchMode):
    """Sums torch's per-op FLOP formulas over the ops this thread runs (``FlopCounterMode`` without its module
    tracking, which needs autograd and so fails under ``inference_mode``)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def _speed_figures(run: engine.EngineRun, results: list[dict[str, Any]], targets: dict[int, str],
                   iou_target: str) -> list[Figure]:
    by = {(r["variant"], r["objects"]): r for r in results}
    out = []
    for n in run.objects:
        where = f"{n} obj ({run.model} {run.image_size}px {run.dtype})"
        for v in run.variants:
            out.append(figure(SECTION, f"{v} object-frames/s, {where}", by[v, n]["fps"] * n, "obj-frames/s"))
        for o in run.ours:
            for b in run.officials:  # targets: the last of ours (compiled) against the last official (vos)
                target = targets.get(n, "") if (o, b) == (run.ours[-1], run.officials[-1]) else ""
                out.append(figure(SECTION, f"{o}/{b}, {where}", by[o, n]["fps"] / by[b, n]["fps"], "x", target))
            out.append(figure(SECTION, f"parity: {o} min IoU vs {run.baseline}, {where}", by[o, n]["min_iou"], "",
                              iou_target, note=f"max |dlogit| {by[o, n]['max_abs_diff']:.3g}"))
    return out


def run_section(cfg: dict[str, Any], seed: int, threads: int) -> list[Figure]:
    """The ``gpu`` section: ``cfg["cuda"]`` settings on a CUDA device, ``cfg["cpu"]`` (smoke) otherwise."""
    cuda = torch.cuda.is_available()
    c = cfg["cuda" if cuda else "cpu"]
    device = "cuda" if cuda else "cpu"
    out: list[Figure] = []
    speed_targets = {int(k): v for k, v in c["targets"].items()}
    fps_for_flops: dict[str, tuple[float, int]] = {}
    began = time.perf_counter()
    for model in c["models"]:
        run = engine.EngineRun(model, c["image_size"], tuple(c["objects"]), c["frames"], device, c["dtype"],
                               tuple(c["variants"]), c["warmup"], c["runs"], seed, threads)
        start = time.perf_counter()
        results = run_isolated(engine.measure, threads, run=run)
        out.append(_wall(f"speed and parity, {model}", start))
        out += _speed_figures(run, results, speed_targets, c["iou_target"])
        if model == c["flops_model"]:
            fastest = max((r for r in results if r["variant"] in run.ours and r["objects"] == max(run.objects)),
                          key=lambda r: r["fps"])
            fps_for_flops[model] = (fastest["fps"], fastest["objects"])

    mem = c["memory"]
    peaks = {}
    start = time.perf_counter()
    for frames in mem["frames"]:
        mem_run = memory.MemoryRun(mem["model"], c["image_size"], mem["objects"], frames, c["image_size"],
                                   c["image_size"], seed)
        r = run_isolated(memory.measure, threads, run=mem_run)
        peaks[frames] = r["gpu_peak"] if cuda else r["state_peak"]
        label = "GPU allocated peak" if cuda else "session state peak (no GPU)"
        out.append(figure(SECTION, f"{label}, {frames} frames ({mem['model']} {c['image_size']}px, "
                                   f"{mem['objects']} obj)", peaks[frames] / memory.MIB, "MiB"))
    out.append(_wall("memory", start))
    short, long = peaks[min(peaks)], peaks[max(peaks)]
    out.append(figure(SECTION, f"memory growth, {max(peaks)} vs {min(peaks)} frames", long / short - 1, "fraction",
                      mem["target"]))

    model = c["flops_model"]
    if model in fps_for_flops:
        fps, n = fps_for_flops[model]
        flops = run_isolated(count_frame_flops, threads, model_name=model, image_size=c["image_size"], objects=n,
                             device=device, dtype=c["dtype"])
        achieved = flops * fps
        name = torch.cuda.get_device_name() if cuda else "cpu"
        peak = device_peak_flops(name) if cuda else None
        where = f"{model} {c['image_size']}px {c['dtype']}, {n} obj, fastest of ours"
        out.append(figure(SECTION, f"FLOPs per frame ({where})", flops / 1e12, "TFLOP"))
        out.append(figure(SECTION, f"achieved FLOP/s ({where})", achieved / 1e12, "TFLOP/s"))
        out.append(figure(SECTION, f"fraction of the bf16 peak ({name})", None if peak is None else achieved / peak,
                          "", note="" if peak else "peak unknown for this device"))
    out.append(_wall("the whole section", began, c.get("budget_s")))
    return out


def _wall(what: str, start: float, budget_s: float | None = None) -> Figure:
    """Wall seconds since ``start`` (process start-up, compiling and warm-up included), against ``budget_s``."""
    return figure(SECTION, f"wall time: {what}", time.perf_counter() - start, "s",
                  f"<= {budget_s:g}" if budget_s else "")

