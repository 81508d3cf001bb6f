"""Engine benchmark: our ``VideoSession`` against the official ``SAM2VideoPredictor``, same weights, video and prompts.

The ``engine`` section of ``python -m benchmarks``, and a command of its own that prints one row per case:

    OMP_NUM_THREADS=1 python -m benchmarks.engine --sizes 256 512 --objects 1 4     # CPU, tiny, 24 frames
    python -m benchmarks.engine --device cuda                                      # 1024 px bf16, tiny and large

Defaults (models, sizes, objects, frames, variants, warm-up and runs, threads, seed) are those of the ``engine``
section in benchmarks/conf/benchmark.yaml.

Setup: the official predictor is built with seeded random weights at the image size (``testkit.oracle``) and its
state dict is loaded strictly into our model. Both get the same pixels (the official one a JPEG folder, ours the
frames decoded back from it) and the same prompts (one box per object on frame 0).

Timing: each variant is timed over a forward propagation, best of ``runs`` after ``warmup`` untimed ones, the
variants taking turns in every round (a drift in the machine's load then hits all of them alike); resetting and
prompting are outside the timing. The official ``init_state`` (which decodes and normalises the whole video up front)
is outside it too and reported apart as that variant's init; our streaming decode is inside ours, and our init is the
session's creation (compiling for the prompts included, with ``compile``). Each variant of a (model, image size)
lives in a fresh process of its own with ``threads`` torch/OpenMP threads (``harness.Isolated``; one process runs at a
time), the baseline's first: a compiled variant cannot change how another one compiles, records CUDA graphs or holds
memory (ours marks CUDA-graph steps, which changes how the official compiled predictor's graph trees reset), and a
process that times an official variant never imports our package (its rows say so; checked). The baseline's process
leaves the weights, the pixels and its masks in a temporary folder for the others.

Variants (``--variants``; the first official one is the baseline):
  official       the official predictor with the process's threads
  official_2t    the same with ``torch.set_num_threads(2)``: on CPU ours runs the image encoder on a second thread
                 (two threads of one intra-op thread each), this gives the official predictor both threads for every op
  official_vos   the official predictor built with ``vos_optimized=True`` (its compiled CUDA path)
  ours           ``VideoSession`` as the pipeline runs it (image encoder overlapped with tracking)
  ours_serial    ours with ``overlap_encoder=False``
  ours_compiled  ours with ``compile=True``

Figures: frames/s and init seconds of every variant; the speed ratio (fps over fps, > 1: ours faster) of ``ours`` and
``ours_compiled`` against each official variant, with the configured targets against the baseline; the largest
|Δ logit| and the smallest mask IoU between each of ours and the baseline over every frame and object (on a grid of
at most ``COMPARE_GRID`` pixels a side: every k-th pixel of larger videos, so the reference stays small). On CPU the
comparison is made at each intra-op thread count of ``threads`` (1 and 2 by default: ours splits that budget between
its encoder thread and tracking, see ``sam2core.thread_plan.plan_threads``). The official package is imported here
alone, inside the measuring process: comparing with it is this benchmark's purpose, and no product code depends on it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from benchmarks.harness import Isolated, Timed, best_seconds, sync
from benchmarks.report import Figure, figure
from benchmarks.video import object_boxes, synthetic_video, write_jpeg_folder
from testkit.oracle import official_predictor, ours_from_official

CONFIG = Path(__file__).resolve().parent / "conf" / "benchmark.yaml"
COMPARE_GRID = 256  # masks are compared on at most this many pixels a side (every k-th pixel)


class _Official(NamedTuple):
    vos_optimized: bool
    threads: int | None  # torch intra-op threads while timed (None: the process's)


OFFICIAL = {"official": _Official(False, None), "official_2t": _Official(False, 2),
            "official_vos": _Official(True, None)}
OURS = {"ours": {}, "ours_serial": {"overlap_encoder": False}, "ours_compiled": {"compile": True}}
TARGETED = ("ours", "ours_compiled")  # the engine as the pipeline runs it; ours_serial and official_2t explain it


@dataclass(frozen=True)
class EngineRun:
    """One engine measurement: a model at an image size, on a device, for several object counts."""

    model: str
    image_size: int
    objects: tuple[int, ...]
    frames: int
    device: str
    dtype: str
    variants: tuple[str, ...]
    warmup: int
    runs: int
    seed: int
    threads: int = 1  # intra-op threads of the measuring process

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in OFFICIAL and v not in OURS]
        if unknown:
            raise ValueError(f"unknown engine variant(s) {unknown}; choose from {[*OFFICIAL, *OURS]}")
        if not self.officials or not self.ours:
            raise ValueError(f"need an official and one of our variants, got {list(self.variants)}")

    @property
    def officials(self) -> list[str]:
        return [v for v in self.variants if v in OFFICIAL]

    @property
    def ours(self) -> list[str]:
        return [v for v in self.variants if v in OURS]

    @property
    def compared(self) -> list[str]:
        """Ours given speed ratios against every official variant: the targeted ones, else all of ours."""
        return [v for v in self.ours if v in TARGETED] or self.ours

    @property
    def baseline(self) -> str:
        return self.officials[0]

    @property
    def where(self) -> str:
        threads = f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.device == "cpu" else ""
        return f"{self.model} {self.device} {self.image_size}px {self.dtype}{threads}"


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _official_step(predictor: Any, folder: Path, boxes: np.ndarray, run: EngineRun,
                   threads: int | None) -> tuple[Timed, float]:
    """The timed propagation of the official predictor (returns the mask logits [K, H, W] per frame) and its
    ``init_state`` seconds."""
    def contexts() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(_torch_threads(threads))
        stack.enter_context(torch.inference_mode())
        if run.dtype == "bfloat16":
            stack.enter_context(torch.autocast(run.device, dtype=torch.bfloat16))
        return stack

    with contexts():
        init, state = best_seconds(lambda: predictor.init_state(video_path=str(folder)), 0, 1, device=run.device)

    def prepare() -> None:
        with contexts():
            predictor.reset_state(state)
            for k, box in enumerate(boxes):
                predictor.add_new_points_or_box(state, frame_idx=0, obj_id=k, box=box)

    def step() -> dict[int, torch.Tensor]:
        with contexts():
            return {t: m[:, 0] for t, _, m in predictor.propagate_in_video(state)}

    return Timed(step, prepare), init


def _our_step(model: torch.nn.Module, frames: np.ndarray, boxes: np.ndarray, run: EngineRun,
              overrides: dict[str, Any]) -> tuple[Timed, float]:
    """The timed forward propagation of a ``VideoSession`` (returns the mask logits per frame) and the session's
    creation seconds (with ``compile``: compiling every shape of the prompted objects' passes)."""
    from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession

    options = SessionOptions(dtype=run.dtype, **overrides)
    plan = {k: [0] for k in range(len(boxes))}
    init, session = best_seconds(lambda: VideoSession(model, ArrayFrameSource(frames), options, prompt_frames=plan),
                                 0, 1, device=run.device)

    def prepare() -> None:
        session.reset()
        for k, box in enumerate(boxes):
            session.add_points(0, k, box=box)

    return Timed(lambda: {r.frame_idx: r.mask_logits for r in session.propagate(direction="forward")}, prepare), init


def _on_grid(masks: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Mask logits [K, H, W] per frame, every k-th pixel (at most ``COMPARE_GRID`` a side), float32 on the host."""
    first = next(iter(masks.values()))
    step = -(-max(first.shape[-2:]) // COMPARE_GRID)
    return {t: m[..., ::step, ::step].float().cpu() for t, m in masks.items()}


def _max_abs_diff(reference: dict[int, torch.Tensor], masks: dict[int, torch.Tensor]) -> float:
    if sorted(reference) != sorted(masks):
        raise RuntimeError(f"frames differ: official {sorted(reference)}, ours {sorted(masks)}")
    return max(float((reference[t].float() - masks[t].float()).abs().max()) for t in reference)


def _min_iou(reference: dict[int, torch.Tensor], masks: dict[int, torch.Tensor]) -> float:
    """Smallest IoU of the binary masks over every object-frame (1 where both are empty)."""
    worst = 1.0
    for t in reference:
        a, b = reference[t].float() > 0, masks[t].float() > 0
        union = (a | b).flatten(1).sum(1).float()
        iou = torch.where(union > 0, (a & b).flatten(1).sum(1) / union.clamp(min=1), torch.ones_like(union))
        worst = min(worst, float(iou.min()))
    return worst


def _ours_loaded() -> bool:
    """Whether this process has imported any of our package (``sam2core``)."""
    return any(name == "sam2core" or name.startswith("sam2core.") for name in sys.modules)


_TIMED: dict[str, Any] = {}  # in a variant's process (``measure``): what it times


def open_variant(run: EngineRun, variant: str, folder: str) -> None:
    """In the variant's own process: build the official predictor (the baseline leaves its weights in ``folder``:
    every official build with the run's seed holds them) or our model from those weights."""
    if run.device == "cuda":  # as the official benchmark script runs
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    _TIMED.clear()
    _TIMED.update(run=run, variant=variant, base=Path(folder))
    if variant in OFFICIAL:
        predictor, weights = official_predictor(run.model, run.image_size, run.seed, device=run.device,
                                                vos_optimized=OFFICIAL[variant].vos_optimized)
        if variant == run.baseline:
            torch.save(weights, Path(folder) / "weights.pt")
        _TIMED["predictor"] = predictor
    else:
        weights = torch.load(Path(folder) / "weights.pt")
        _TIMED["model"] = ours_from_official(weights, run.model, run.image_size).to(run.device)


def prepare_objects(objects: int) -> None:
    """In the variant's process: set up its timed propagation of ``objects`` objects (the baseline first renders
    the video on the device and writes it as JPEGs, and the pixels as they decode for ours)."""
    run, variant, base = _TIMED["run"], _TIMED["variant"], _TIMED["base"]
    size = run.image_size
    folder = base / f"objects{objects}"
    if variant == run.baseline:
        np.save(base / f"frames{objects}.npy",
                write_jpeg_folder(folder, synthetic_video(run.frames, objects, size, size, device=run.device)))
    boxes = object_boxes(objects, size, size)
    if variant in OFFICIAL:
        timed, init = _official_step(_TIMED["predictor"], folder, boxes, run, OFFICIAL[variant].threads)
    else:
        timed, init = _our_step(_TIMED["model"], np.load(base / f"frames{objects}.npy"), boxes, run, OURS[variant])
    _TIMED.update(objects=objects, timed=timed, init=init, masks=None)


def timed_round(keep: bool) -> float:
    """In the variant's process: seconds of one timed propagation (prepared outside the timing); with ``keep`` its
    masks are kept for ``finish_objects``."""
    seconds, masks = _TIMED["timed"].once(_TIMED["run"].device)
    if keep:
        _TIMED["masks"] = _on_grid(masks)
    return seconds


def finish_objects(seconds: float) -> dict[str, Any]:
    """In the variant's process: the row of the object count just timed (best ``seconds``); the baseline leaves its
    masks as the reference, ours compare theirs with it."""
    run, variant, base, n = _TIMED["run"], _TIMED["variant"], _TIMED["base"], _TIMED["objects"]
    masks = _TIMED.pop("masks")
    diff = iou = None
    if variant == run.baseline:
        torch.save(masks, base / f"reference{n}.pt")
    elif variant in OURS:
        reference = torch.load(base / f"reference{n}.pt")
        diff, iou = _max_abs_diff(reference, masks), _min_iou(reference, masks)
    del _TIMED["timed"]
    sync(run.device)
    print(f"engine {run.where}: {variant}, {n} obj: {run.frames / seconds:.3g} frames/s", flush=True)
    return {"variant": variant, "objects": n, "seconds": seconds, "fps": run.frames / seconds,
            "init_seconds": _TIMED["init"], "max_abs_diff": diff, "min_iou": iou, "threads": torch.get_num_threads(),
            "ours_loaded": _ours_loaded()}


def measure(run: EngineRun) -> list[dict[str, Any]]:
    """Seconds, frames/s, init seconds (and for ours |Δ logit| and IoU against the baseline) of every variant for
    every object count. Each variant lives in a fresh process of its own for the whole run, the baseline's first
    (it writes the weights, pixels and reference masks the others read); the variants take turns in every round of
    timed propagations, one process running at a time (a drift in the machine's load hits all of them alike).
    Raises if a process that timed an official variant had imported our package."""
    order = [run.baseline] + [v for v in run.variants if v != run.baseline]
    rounds = run.warmup + run.runs
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as folder, contextlib.ExitStack() as stack:
        processes = {v: stack.enter_context(Isolated(run.threads)) for v in order}
        for variant, process in processes.items():
            process.call(open_variant, run=run, variant=variant, folder=folder)
        for n in run.objects:
            for process in processes.values():
                process.call(prepare_objects, objects=n)
            best = dict.fromkeys(order, float("inf"))
            for i in range(rounds):
                for variant, process in processes.items():
                    seconds = process.call(timed_round, keep=i == rounds - 1)
                    if i >= run.warmup:
                        best[variant] = min(best[variant], seconds)
            for variant, process in processes.items():
                row = process.call(finish_objects, seconds=best[variant])
                if variant in OFFICIAL and row["ours_loaded"]:
                    raise RuntimeError(f"the process that timed {variant} imported sam2core")
                results.append(row)
    return results


def figures(run: EngineRun, results: list[dict[str, Any]], ratio_targets: dict[int, str]) -> list[Figure]:
    """The report's figures of one run (see the module docstring)."""
    by = {(r["variant"], r["objects"]): r for r in results}
    out = []
    for n in run.objects:
        where = f"{n} obj ({run.where})"
        for v in run.variants:
            kind = "init_state" if v in OFFICIAL else "session creation"
            out.append(figure("engine", f"{v} fps, {where}", by[v, n]["fps"], "frames/s",
                              note=f"{kind} {by[v, n]['init_seconds']:.3g} s"))
        for o in run.compared:
            for b in run.officials:
                target = ratio_targets.get(n, "") if o in TARGETED and b == run.baseline else ""
                out.append(figure("engine", f"{o}/{b}, {where}", by[o, n]["fps"] / by[b, n]["fps"], "x", target))
        for o in run.ours:
            out.append(figure("engine", f"{o} max |dlogit| vs {run.baseline}, {where}", by[o, n]["max_abs_diff"],
                              "logit"))
            out.append(figure("engine", f"{o} min mask IoU vs {run.baseline}, {where}", by[o, n]["min_iou"], ""))
    return out


def runs_for(cfg: dict[str, Any], device: str, seed: int, threads: int = 1) -> list[EngineRun]:
    """One run per model and image size of the ``engine.<device>`` config, at ``threads`` intra-op threads."""
    return [EngineRun(model, size, tuple(cfg["objects"]), cfg["frames"], device, cfg["dtype"], tuple(cfg["variants"]),
                      cfg["warmup"], cfg["runs"], seed, threads)
            for model in cfg["models"] for size in cfg["image_sizes"]]


def run_section(cfg: dict[str, Any], seed: int, threads: int) -> list[Figure]:
    """The report's ``engine`` section: the CPU comparisons at each of ``engine.cpu.threads`` intra-op thread counts
    (``threads`` when none are configured); the CUDA ones when a GPU is present."""
    out = []
    for device in ("cpu", "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            out.append(figure("engine", "CUDA comparison", None, "", note="skipped: no CUDA device"))
            continue
        targets = {int(k): v for k, v in cfg[device]["targets"].items()}
        counts = cfg[device].get("threads") or [threads] if device == "cpu" else [threads]
        for count in counts:
            for run in runs_for(cfg[device], device, seed, count):
                out += figures(run, measure(run), targets)
    return out


def format_table(measured: list[tuple[EngineRun, list[dict[str, Any]]]]) -> str:
    """One row per (model, size, threads, objects): seconds per frame, speed ratios, init seconds, |Δ logit|."""
    first = measured[0][0]
    header = ["model", "size", "thr", "obj", "dtype"]
    rows = []
    for run, results in measured:
        by = {(r["variant"], r["objects"]): r for r in results}
        columns: dict[str, str] = {}
        for n in run.objects:
            columns = {"model": run.model, "size": str(run.image_size), "thr": str(run.threads), "obj": str(n),
                       "dtype": run.dtype}
            columns.update({f"{v} s/f": f"{by[v, n]['seconds'] / run.frames:.4f}" for v in run.variants})
            columns.update({f"{o}/{b}": f"{by[o, n]['fps'] / by[b, n]['fps']:.2f}"
                            for o in run.compared for b in run.officials})
            columns.update({f"{v} init s": f"{by[v, n]['init_seconds']:.3f}" for v in run.variants})
            columns.update({f"{o} |dlogit|": f"{by[o, n]['max_abs_diff']:.3g}" for o in run.ours})
            rows.append(columns)
        header += [c for c in columns if c not in header]
    widths = {c: max(len(c), *(len(r.get(c, "-")) for r in rows)) for c in header}
    lines = [
        f"device={first.device}, thr: torch/OpenMP threads of the measuring process; official_2t: "
        "torch.set_num_threads(2); ours: the thread budget split between an encoder thread and tracking (serial "
        "when there is no core to spare), ours_serial: overlap_encoder=False",
        f"s/f: seconds per frame, best of {first.runs} interleaved rounds after {first.warmup} warm-up, each "
        "variant in its own process; ours/official: frames/s ratio "
        f"(> 1: ours faster); init: official init_state, ours session creation; |dlogit|: max vs {first.baseline}",
        f"1-min load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        _row({c: c for c in header}, header, widths),
    ]
    lines.append("-" * len(lines[-1]))
    lines += [_row(r, header, widths) for r in rows]
    return "\n".join(lines)


def _row(cells: dict[str, str], header: list[str], widths: dict[str, int]) -> str:
    return "  ".join(cells.get(c, "-").ljust(widths[c]) if c == "model" else cells.get(c, "-").rjust(widths[c])
                     for c in header)


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    config = OmegaConf.load(CONFIG)
    defaults = OmegaConf.to_container(config.engine, resolve=True)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.split("\n\n")[0],
                                     epilog="Defaults: the engine section of benchmarks/conf/benchmark.yaml.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", help="model names, e.g. sam2.1_hiera_tiny")
    parser.add_argument("--sizes", type=int, nargs="+", help="image sizes")
    parser.add_argument("--objects", type=int, nargs="+", help="object counts")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--variants", nargs="+", choices=[*OFFICIAL, *OURS], metavar="VARIANT",
                        help=f"what to time, of {', '.join([*OFFICIAL, *OURS])} (the first official one is the "
                             "baseline)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"])
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--threads", type=int, nargs="+",
                        help="torch/OpenMP threads of the measuring processes, one comparison per count (default: "
                             "engine.cpu.threads on CPU, threads on CUDA)")
    parser.add_argument("--seed", type=int, default=config.seed)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    cfg = defaults[args.device]
    for key, value in (("models", args.models), ("image_sizes", args.sizes), ("objects", args.objects),
                       ("frames", args.frames), ("variants", args.variants), ("dtype", args.dtype),
                       ("warmup", args.warmup), ("runs", args.runs)):
        if value is not None:
            cfg[key] = value
    counts = args.threads or (cfg.get("threads") if args.device == "cpu" else None) or [config.threads]
    os.environ.update(TQDM_DISABLE="1")
    measured = [(run, measure(run)) for count in counts for run in runs_for(cfg, args.device, args.seed, count)]
    print()
    print(format_table(measured))


if __name__ == "__main__":
    main()
