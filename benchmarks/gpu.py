"""GPU acceptance: ``python -m benchmarks preset=gpu`` (the ``gpu`` section), a staged script with one table and JSON.

The stages run in order (settings ``gpu.cuda.stages``), each printing its rows as soon as it is measured; a stage
whose estimate (``estimate_s``, compiling included) would end past ``gpu.cuda.budget_s`` (9 minutes: a device command
may run 10) is skipped and named in the table. ``python -m benchmarks preset=gpu stage=N`` reruns stage N alone
(the FLOP/s stage then reads the speed it needs from the last run's ``gpu.state`` file). Compiled code is cached
across runs in ``gpu.inductor_cache`` (``TORCHINDUCTOR_CACHE_DIR``; outputs/ is git-ignored); synthetic frames are
rendered on the device. Every measurement runs in a fresh process (``harness``). Stage kinds:

- ``steady``: our compiled engine on one video after its session's warm-up: graphs dynamo compiled, graphs compiled
  and CUDA graphs recorded during the pass (both targets 0), CUDA-graph skips, and the SDPA backend the dispatcher
  picks for the steady-state memory attention (no mask) and for the masked one before it (flash needs no mask);
- ``speed``: object-frames/s of the official predictor eager and ``vos_optimized=True`` and of ours eager and
  compiled at 1, 4 and 16 objects, the ratios of ours to ``vos_optimized`` (targets), and bf16 parity: the smallest
  mask IoU per object-frame of ours against the official predictor under autocast (same weights, pixels, boxes);
- ``memory``: peak GPU memory allocated while propagating a short and a long video (growth target);
- ``flops``: FLOPs of one tracked frame (image encoder + tracking of every object with a full memory, by torch's
  per-op FLOP formulas) times the frames/s of the fastest of ours, against the device's dense bf16 peak (datasheet,
  by device name: ``device_peak_flops``);
- ``images``: the image job's loop against a loop of the official image predictor (``benchmarks.images``): images/s
  at 1024 px, 4 boxes per image, the same masks, and the ratio (target).
Without a GPU (settings ``gpu.cpu``) the same stages at tiny sizes, without the CUDA-only variants and with the
session's state bytes for memory: a smoke test of the command, in the test suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from benchmarks import engine, images, memory
from benchmarks.harness import run_isolated
from benchmarks.report import Figure, figure, format_table

SECTION = "gpu"
# dense bf16 tensor-core peaks (datasheets), by device name as torch.cuda.get_device_name() gives it; first match
# wins, so the PCIe and NVL parts come before the SXM part of the same name
BF16_PEAK_FLOPS = (
    (r"\bH100\b.*\bPCIe\b", 756e12), (r"\bH100\b.*\bNVL\b", 835e12), (r"\bH100\b", 989e12),
    (r"\bH200\b.*\bNVL\b", 835e12), (r"\bG?H200\b", 989e12),
    (r"\bA100\b", 312e12), (r"\bL40S\b", 362e12), (r"\bA10G\b", 70e12), (r"\bL4\b", 121e12),
)


def device_peak_flops(name: str) -> float | None:
    """The dense bf16 peak of the named device, None when it is not in the table."""
    return next((peak for pattern, peak in BF16_PEAK_FLOPS if re.search(pattern, name)), None)


def count_frame_flops(model_name: str, image_size: int, objects: int, device: str, dtype: str) -> float:
    """FLOPs of one tracked frame once the memory is full: its image encoding, the frame's memory-attention prefix
    and the tracking step of ``objects`` objects (every memory slot filled, no mask), as the engine runs them; runs
    in a fresh process. (Counted under ``no_grad``: dispatch modes do not see ops under ``inference_mode``.)"""
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
            step(prefix[0], prefix[1], feats.feat, feats.high_res[0], feats.high_res[1], memory, packed, ptrs,
                 None, False)
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


def steady_state(model_name: str, image_size: int, objects: int, frames: int, device: str, dtype: str,
                 seed: int) -> dict[str, Any]:
    """Our engine (compiled on CUDA) over one video after the session's warm-up for its prompts: dynamo graphs and
    CUDA graphs recorded at warm-up and during the pass, CUDA-graph skips, and the SDPA backend of the memory
    attention's shapes in steady state (every slot filled: no mask) and before it (masked); runs in a fresh
    process."""
    from torch._dynamo.utils import counters
    from torch.nn.attention import SDPBackend

    from benchmarks.video import SyntheticSource, object_boxes
    from sam2core.build import build_model
    from sam2core.video import SessionOptions, VideoSession

    recorded = [0]
    cuda = device == "cuda"
    if cuda:
        from torch._inductor import cudagraph_trees

        record = cudagraph_trees.CUDAGraphTreeManager.record_function

        def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
            recorded[0] += 1
            return record(self, *args, **kwargs)

        cudagraph_trees.CUDAGraphTreeManager.record_function = counting
    torch.manual_seed(seed)
    model = build_model(model_name, image_size=image_size, device=device)
    source = SyntheticSource(frames, objects, image_size, image_size, device)
    options = SessionOptions(dtype=dtype, compile=cuda)
    start = time.perf_counter()
    session = VideoSession(model, source, options, prompt_frames={k: [0] for k in range(objects)})
    warm_seconds = time.perf_counter() - start
    warm_graphs, warm_recorded = counters["stats"]["unique_graphs"], recorded[0]
    for k, box in enumerate(object_boxes(objects, image_size, image_size)):
        session.add_points(0, k, box=box)
    start = time.perf_counter()
    done = sum(1 for _ in session.propagate(direction="forward"))
    pass_seconds = time.perf_counter() - start

    cfg = model.config
    hw, split = cfg.feat_size ** 2, cfg.d_model // cfg.mem_dim
    keys = cfg.num_maskmem * hw + cfg.max_obj_ptrs_in_encoder * split  # one conditioning frame, every slot filled
    compute = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    q = torch.randn(objects, 1, hw, cfg.d_model, dtype=compute, device=device)
    k = torch.randn(objects, 1, keys, cfg.d_model, dtype=compute, device=device)
    mask = torch.ones(objects, 1, 1, keys, dtype=torch.bool, device=device)
    with torch.profiler.profile() as prof:
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    ops = sorted({e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")})
    return {"frames": done, "warm_seconds": warm_seconds, "pass_seconds": pass_seconds, "graphs": warm_graphs,
            "pass_graphs": counters["stats"]["unique_graphs"] - warm_graphs, "recorded": warm_recorded,
            "pass_recorded": recorded[0] - warm_recorded, "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
            "steady_backend": SDPBackend(torch._fused_sdp_choice(q, k, k)).name,
            "masked_backend": SDPBackend(torch._fused_sdp_choice(q, k, k, mask)).name, "steady_ops": ops}


def _steady_figures(stage: dict[str, Any], c: dict[str, Any], device: str, seed: int,
                    threads: int) -> list[Figure]:
    r = run_isolated(steady_state, threads, model_name=stage["model"], image_size=c["image_size"],
                     objects=stage["objects"], frames=stage["frames"], device=device, dtype=c["dtype"], seed=seed)
    where = f"({stage['model']} {c['image_size']}px {c['dtype']}, {stage['objects']} obj, {r['frames']} frames)"
    return [
        figure(SECTION, f"steady state: SDPA backend, no mask {where}", None, "", note=(
            f"{r['steady_backend']} ({', '.join(r['steady_ops'])}); masked before: {r['masked_backend']}")),
        figure(SECTION, f"steady state: graphs compiled at warm-up {where}", r["graphs"], "graphs",
               note=f"{r['warm_seconds']:.3g} s, {r['recorded']} CUDA graphs recorded"),
        figure(SECTION, f"steady state: graphs compiled during the pass {where}", r["pass_graphs"], "graphs",
               "<= 0", note=f"pass {r['pass_seconds']:.3g} s"),
        figure(SECTION, f"steady state: CUDA graphs recorded during the pass {where}", r["pass_recorded"], "graphs",
               "<= 0"),
        figure(SECTION, f"steady state: CUDA-graph skips {where}", r["cudagraph_skips"], "graphs", "<= 0"),
    ]


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


def _memory_figures(c: dict[str, Any], cuda: bool, seed: int, threads: int) -> list[Figure]:
    mem = c["memory"]
    peaks = {}
    out = []
    for frames in mem["frames"]:
        mem_run = memory.MemoryRun(mem["model"], c["image_size"], mem["objects"], frames, c["image_size"],
                                   c["image_size"], seed)
        r = run_isolated(memory.measure, threads, run=mem_run)
        peaks[frames] = r["gpu_peak"] if cuda else r["state_peak"]
        label = "GPU allocated peak" if cuda else "session state peak (no GPU)"
        out.append(figure(SECTION, f"{label}, {frames} frames ({mem['model']} {c['image_size']}px, "
                                   f"{mem['objects']} obj)", peaks[frames] / memory.MIB, "MiB"))
    short, long = peaks[min(peaks)], peaks[max(peaks)]
    out.append(figure(SECTION, f"memory growth, {max(peaks)} vs {min(peaks)} frames", long / short - 1, "fraction",
                      mem["target"]))
    return out


def _flops_figures(c: dict[str, Any], speed: dict[str, Any], cuda: bool, device: str, threads: int) -> list[Figure]:
    model = c["flops_model"]
    if model not in speed:
        return [figure(SECTION, f"FLOP/s ({model})", None, "", note=f"skipped: no speed of {model} measured")]
    fps, n = speed[model]
    flops = run_isolated(count_frame_flops, threads, model_name=model, image_size=c["image_size"], objects=n,
                         device=device, dtype=c["dtype"])
    achieved = flops * fps
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = device_peak_flops(name) if cuda else None
    where = f"{model} {c['image_size']}px {c['dtype']}, {n} obj, fastest of ours"
    return [figure(SECTION, f"FLOPs per frame ({where})", flops / 1e12, "TFLOP"),
            figure(SECTION, f"achieved FLOP/s ({where})", achieved / 1e12, "TFLOP/s"),
            figure(SECTION, f"fraction of the bf16 peak ({name})", None if peak is None else achieved / peak, "",
                   note="" if peak else "peak unknown for this device")]


def run_section(cfg: dict[str, Any], seed: int, threads: int, stage: int | None = None) -> list[Figure]:
    """The ``gpu`` section: ``cfg["cuda"]`` stages on a CUDA device, ``cfg["cpu"]`` (smoke) otherwise; ``stage``:
    only that one (1-based)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cfg["inductor_cache"]).resolve()))
    cuda = torch.cuda.is_available()
    c = cfg["cuda" if cuda else "cpu"]
    device = "cuda" if cuda else "cpu"
    stages = c["stages"]
    if stage is not None and not 1 <= stage <= len(stages):
        raise ValueError(f"stage must be 1..{len(stages)}, got {stage}")
    state_path = Path(cfg["state"])
    speed: dict[str, Any] = json.loads(state_path.read_text()) if stage is not None and state_path.exists() else {}
    budget = c["budget_s"]
    out: list[Figure] = []
    began = time.perf_counter()
    for number, spec in enumerate(stages, start=1):
        if stage is not None and number != stage:
            continue
        name = f"stage {number} ({spec['kind']}{', ' + spec['model'] if 'model' in spec else ''})"
        elapsed = time.perf_counter() - began
        if stage is None and elapsed + spec["estimate_s"] > budget:
            rows = [figure(SECTION, f"{name}: skipped", None, "s", note=(
                f"{elapsed:.0f} s used + {spec['estimate_s']} s estimated > the {budget} s budget; "
                f"rerun it alone: stage={number}"))]
        else:
            start = time.perf_counter()
            rows = _run_stage(spec, c, cuda, device, seed, threads, speed)
            rows.append(_wall(name, start, spec["estimate_s"]))
            state_path.parent.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps(speed))
        print(format_table(rows), flush=True)  # each stage's rows as soon as they are measured
        out += rows
    out.append(_wall("the whole section", began, budget))
    return out


def _run_stage(spec: dict[str, Any], c: dict[str, Any], cuda: bool, device: str, seed: int, threads: int,
               speed: dict[str, Any]) -> list[Figure]:
    """One stage's figures; a speed stage leaves in ``speed`` the fastest of ours at the most objects (for FLOP/s)."""
    kind = spec["kind"]
    if kind == "steady":
        return _steady_figures(spec, c, device, seed, threads)
    if kind == "memory":
        return _memory_figures(c, cuda, seed, threads)
    if kind == "flops":
        return _flops_figures(c, speed, cuda, device, threads)
    if kind == "images":
        return images.case_figures(SECTION, spec["model"], spec, c["dtype"], c["warmup"], c["runs"], seed, threads,
                                   spec["folder"])
    if kind != "speed":
        raise ValueError(f"unknown stage kind {kind!r}: steady, speed, memory, flops or images")
    run = engine.EngineRun(spec["model"], c["image_size"], tuple(c["objects"]), c["frames"], device, c["dtype"],
                           tuple(c["variants"]), c["warmup"], c["runs"], seed, threads)
    results = engine.measure(run)
    fastest = max((r for r in results if r["variant"] in run.ours and r["objects"] == max(run.objects)),
                  key=lambda r: r["fps"])
    speed[run.model] = (fastest["fps"], fastest["objects"])
    targets = {int(k): v for k, v in c["targets"].items()}
    return _speed_figures(run, results, targets, c["iou_target"])


def _wall(what: str, start: float, budget_s: float | None = None) -> Figure:
    """Wall seconds since ``start`` (process start-up, compiling and warm-up included), against ``budget_s``."""
    return figure(SECTION, f"wall time: {what}", time.perf_counter() - start, "s",
                  f"<= {budget_s:g}" if budget_s else "")
