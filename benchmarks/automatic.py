"""Automatic mask generation: what discovering objects costs per keyframe (``sam2core.AutomaticMaskGenerator``).

The ``automatic`` section of ``python -m benchmarks``, and a command of its own:

    OMP_NUM_THREADS=1 python -m benchmarks.automatic                 # the CPU cases below, one thread
    python -m benchmarks.automatic --device cuda                     # the CUDA cases (when a GPU is present)

Setup: our model with seeded random weights (no official package involved), one synthetic keyframe per case. Random
weights predict IoUs near 0.5, so with the official default thresholds (0.8 IoU, 0.95 stability) nearly every
candidate would be dropped before upsampling and the figure would flatter us; both thresholds are 0 here instead
(``pred_iou_thresh`` / ``stability_score_thresh`` in the config): every candidate mask is upsampled to the frame,
scored and boxed, an upper bound on the post-processing a trained model costs.

Figures per case: milliseconds per keyframe with the generator's own encoder pass, and on features shared with
tracking (``generate(image, features=...)``: the video pipeline encodes each keyframe once), plus the encoder pass
alone. On CPU the 1024 px case uses an 8 x 8 grid (64 clicks, one decoder batch) instead of the official 32 x 32:
one 1024 px keyframe at 32 x 32 takes minutes on one CPU thread; the per-click cost is reported so the full grid
can be read off (x 16 for 32 x 32). Each case runs in a fresh process with ``threads`` torch threads. Also per case:
one batch of clicks through the mask decoder with the image's features repeated per click (the official layout) and
shared at batch 1 (ours), in turns, with the logits compared.

Whole video (``video_cases``): what ``prompts=auto`` costs over prompting the same objects. The worker's two stages
are run as it runs them (``sam2core.video.discovery``: the walk over keyframes with the real generator on the
session's features, then the final pass, which reuses the features of the keyframes the walk found objects on); the
prompted baseline is that final pass alone on the video as new (the discovered objects prompted where they were
found, propagated both ways), i.e. a manifest job that already knew them; the two take turns three times (fastest of
each). On a CPU the case's process keeps freed memory, as the pipeline's CPU replicas do (``sam2core.host_memory``).
Figures: seconds of both, the overhead ratio (auto over prompted), the walk's share spent in the generator and in its
mask decoder, the clicks it decoded (those on known objects are skipped), and the ratio the walk would give with the
generator's post-processing free (what is left is the official per-click decoder arithmetic and the walk's own
tracking). With random weights the tracked masks are empty, so no click is
skipped and every keyframe finds its generator's mask new again until ``max_objects``: the walk is nearly all
generator, more than a trained model's walk (which skips the clicks on what it tracks) would be.

Matching (``matching``): what deciding whether one generator mask is a known object costs on a keyframe, per
candidate, at video resolution with 10 / 30 / 50 known masks: the old host rule (``testkit.admission``: numpy, every
candidate against every known and admitted mask at full resolution) against ``sam2core.video.discovery.admit``
(on the masks' device, boxes first, exact counts inside the boxes), timed in turns in one process, with the same
admissions checked. The keyframe: known objects are random ellipses (2-12% of each side), the candidates are the
generator's re-detections of them (jittered ellipses) plus ``new`` ones.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from benchmarks.harness import best_seconds, run_isolated
from benchmarks.report import Figure, figure, format_table

DEFAULTS: dict[str, Any] = {
    "arch": "sam2.1_hiera_tiny",
    "cases": [  # CPU; the test size (128 px, full 32 x 32 grid) and 1024 px with a smaller grid (see above)
        {"image_size": 128, "height": 128, "width": 128, "points_per_side": 32},
        {"image_size": 1024, "height": 1024, "width": 1024, "points_per_side": 8},
    ],
    "cuda_cases": [  # on a GPU instead: the official defaults' 32 x 32 grid
        {"image_size": 1024, "height": 1024, "width": 1024, "points_per_side": 32},
        {"image_size": 1024, "height": 1080, "width": 1920, "points_per_side": 32},
    ],
    "matching": {"height": 1080, "width": 1920, "known": [10, 30, 50], "new": 10, "runs": 2},
    "video_cases": [  # CPU, whole video: 24 frames at 256 px, keyframes every 4, a 16 x 16 grid, 4 objects
        {"image_size": 256, "frames": 24, "every": 4, "points_per_side": 16, "max_objects": 4},
    ],
    "cuda_video_cases": [  # on a GPU: 1024 px, the official grid, 16 objects
        {"image_size": 1024, "frames": 96, "every": 4, "points_per_side": 32, "max_objects": 16},
    ],
    "dtype": "float32",  # CPU cases
    "cuda_dtype": "bfloat16",  # CUDA cases, as the pipeline runs on a GPU
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "warmup": 0,
    "runs": 1,
}


def keyframe(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB frame (uint8 ``H x W x 3``): blobs of colour, so crops and features are not flat."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 9, 16, generator=g) * 255
    up = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return up.clamp(0, 255).round().byte()[0].permute(1, 2, 0).numpy()


def measure(arch: str, image_size: int, height: int, width: int, points_per_side: int, dtype: str,
            pred_iou_thresh: float, stability_score_thresh: float, warmup: int, runs: int, seed: int,
            device: str) -> dict[str, Any]:
    """Seconds per keyframe: the encoder pass alone, the generator with its own pass, the generator on given
    features; and how many masks it returned."""
    from sam2core import AutomaticMaskGenerator, build_model

    torch.manual_seed(seed)
    model = build_model(arch, image_size=image_size, device=device).eval()
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    generator = AutomaticMaskGenerator(model, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                                       stability_score_thresh=stability_score_thresh)
    image = keyframe(height, width, seed)
    frame = torch.from_numpy(image)
    with torch.inference_mode():
        encode_s, feats = best_seconds(lambda: model.encode_image(model.preprocess(frame[None])), warmup, runs,
                                       device=device)
        own_s, _ = best_seconds(lambda: generator.generate_masks(image), warmup, runs, device=device)
        shared_s, found = best_seconds(lambda: generator.generate_masks(image, features=feats), warmup, runs,
                                       device=device)
        decoder = decoder_batch(model, feats, generator.options.points_per_batch, warmup, runs, device)
    return {"encode": encode_s, "own": own_s, "shared": shared_s, "masks": len(found),
            "clicks": points_per_side**2, **decoder}


def decoder_batch(model: Any, feats: Any, clicks: int, warmup: int, runs: int, device: str) -> dict[str, Any]:
    """Seconds of one batch of ``clicks`` single-click decodes on one image, in turns: the image's features
    repeated per click (the official decoder's layout: every click's first block redoes the image side) and shared
    at batch 1 (ours: that work once per batch); and whether the logits are the same."""
    from benchmarks.harness import Timed, interleaved_best
    from sam2core.image_predictor import decode
    from sam2core.modeling.sam2 import ImageFeatures

    shared = ImageFeatures(model.add_no_memory(feats.feat), feats.pos, feats.high_res)
    repeated = ImageFeatures(shared.feat.expand(clicks, -1, -1, -1), shared.pos,
                             tuple(t.expand(clicks, -1, -1, -1) for t in shared.high_res))
    g = torch.Generator().manual_seed(0)
    coords = (torch.rand(clicks, 1, 2, generator=g) * model.image_size).to(device)
    labels = torch.ones(clicks, 1, dtype=torch.int32, device=device)
    outputs: dict[str, Any] = {}
    best = interleaved_best({name: Timed(lambda f=f: decode(model, f, coords, labels, None, True))
                             for name, f in (("repeated", repeated), ("shared", shared))},
                            warmup, max(runs, 3), device, on_last=outputs.__setitem__)
    same = all(torch.equal(a, b) for a, b in zip(outputs["repeated"], outputs["shared"]))
    return {"decode_repeated": best["repeated"], "decode_shared": best["shared"], "decode_same": same,
            "batch": clicks}


def measure_video(arch: str, image_size: int, frames: int, every: int, points_per_side: int, max_objects: int,
                  dtype: str, pred_iou_thresh: float, stability_score_thresh: float, seed: int,
                  device: str, runs: int = 3) -> dict[str, Any]:
    """Seconds of the discovery walk (and of the generator inside it) and of the final pass on one synthetic video,
    as the worker runs them; the final pass alone is the prompted baseline. The two take turns ``runs`` times and
    the fastest of each counts: on a shared machine the load drifts, and their ratio is the figure."""
    import time

    from benchmarks.harness import sync
    from benchmarks.video import synthetic_video
    from sam2core import AutomaticMaskGenerator, build_model
    from sam2core.host_memory import keep_freed_memory
    from sam2core.video import ArrayFrameSource, SessionOptions, VideoSession
    from sam2core.video.discovery import DiscoveryOptions, discover_objects

    if device == "cpu":
        keep_freed_memory()  # as a CPU replica of the pipeline does (this process is the case's own)
    torch.manual_seed(seed)
    model = build_model(arch, image_size=image_size, device=device).eval()
    source = ArrayFrameSource(synthetic_video(frames, max_objects, image_size, image_size))
    session = VideoSession(model, source, SessionOptions(dtype=dtype))
    generator = AutomaticMaskGenerator(model, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                                       stability_score_thresh=stability_score_thresh)
    options = DiscoveryOptions(every=every, max_objects=max_objects, min_area=1)
    spent = {"generator": 0.0, "decoder": 0.0, "keyframes": 0.0, "clicks": 0}

    def timed(name: str, inner: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            sync(device)
            spent[name] += time.perf_counter() - start
            spent["keyframes"] += name == "generator"
            return out
        return call

    # the generator's share of the walk, and its mask decoder's share of that (the official per-click arithmetic)
    generator.generate_masks = timed("generator", generator.generate_masks)
    decode = timed("decoder", generator._decode)

    def counted(feats: Any, coords: torch.Tensor, *args: Any) -> Any:
        spent["clicks"] += coords.shape[0]  # clicks on known objects are skipped before this
        return decode(feats, coords, *args)

    generator._decode = counted

    def final_pass(after_walk: bool) -> int:
        # after the walk: the session holds the features of the keyframes objects were found on (the worker's
        # final pass); a manifest job has no walk before it: the same video as new, nothing kept
        session.reset(None if after_walk else source)
        for d in found:
            session.add_mask(d.frame_idx, d.obj_id, d.mask)
        return sum(1 for _ in session.propagate(direction="both"))

    autos, prompted = [], []
    for _ in range(runs):
        spent.update(generator=0.0, decoder=0.0, keyframes=0.0, clicks=0)
        sync(device)
        start = time.perf_counter()
        found = discover_objects(session, generator, options)
        sync(device)
        walk_s = time.perf_counter() - start
        final_s, yielded = best_seconds(lambda: final_pass(True), 0, 1, device=device)
        alone_s, yielded_alone = best_seconds(lambda: final_pass(False), 0, 1, device=device)
        assert yielded == yielded_alone == frames
        autos.append({"walk": walk_s, "final": final_s, **spent})
        prompted.append(alone_s)
    auto = min(autos, key=lambda a: a["walk"] + a["final"])
    return {"walk": auto["walk"], "generator": auto["generator"], "decoder": auto["decoder"],
            "final": auto["final"], "prompted": min(prompted), "objects": len(found),
            "generated": int(auto["keyframes"]), "keyframes": len(range(0, frames, every)),
            "clicks": int(auto["clicks"]), "grid": int(auto["keyframes"]) * points_per_side**2}


def matching_scene(height: int, width: int, known: int, new: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidates, known masks) of one keyframe, bool [N, H, W] and [M, H, W]: ``known`` random ellipses, the
    generator's jittered re-detections of them and ``new`` other ellipses."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[0:height, 0:width]

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1

    shapes = [(rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.02, 0.12) * height,
               rng.uniform(0.02, 0.12) * width) for _ in range(known + new)]
    jittered = [(cy + rng.normal(0, 0.05) * ry, cx + rng.normal(0, 0.05) * rx, ry * rng.uniform(0.8, 1.2),
                 rx * rng.uniform(0.8, 1.2)) for cy, cx, ry, rx in shapes[:known]]
    candidates = np.stack([ellipse(*s) for s in jittered + shapes[known:]])
    return candidates, np.stack([ellipse(*s) for s in shapes[:known]])


def measure_matching(height: int, width: int, known: int, new: int, runs: int, seed: int) -> dict[str, Any]:
    """Seconds per candidate of the old host admission and of the device one on one keyframe (timed in turns), and
    whether they admitted the same masks."""
    from benchmarks.harness import Timed, interleaved_best
    from sam2core.video.discovery import DiscoveryOptions, admit
    from testkit.admission import reference_admit

    candidates, masks = matching_scene(height, width, known, new, seed)
    options = DiscoveryOptions()
    on_device = torch.from_numpy(candidates), torch.from_numpy(masks)
    admitted: dict[str, list[int]] = {}
    best = interleaved_best({
        "old": Timed(lambda: reference_admit(candidates, list(masks), options.min_area, options.match_iou,
                                             options.match_coverage, options.max_objects)),
        "new": Timed(lambda: admit(*on_device, options, options.max_objects)),
    }, 0, runs, on_last=admitted.__setitem__)
    n = len(candidates)
    return {"old": best["old"] / n, "new": best["new"] / n, "candidates": n, "admitted": len(admitted["new"]),
            "same": admitted["old"] == admitted["new"]}


def _matching_figures(c: dict[str, Any], known: int, threads: int, r: dict[str, Any]) -> list[Figure]:
    where = f"{c['width']}x{c['height']}, {known} known masks, {r['candidates']} candidates, cpu, {threads} thread(s)"
    note = f"{r['admitted']} admitted, {'the same' if r['same'] else 'DIFFERENT'} admissions"
    return [
        figure("automatic", f"discovery matching, old host rule ({where})", r["old"] * 1e3, "ms/candidate"),
        figure("automatic", f"discovery matching, device admit ({where})", r["new"] * 1e3, "ms/candidate",
               target="<= 10"),
        figure("automatic", f"discovery matching, old / new ({where})", r["old"] / r["new"], "x", note=note),
    ]


def _video_figures(arch: str, case: dict[str, Any], dtype: str, device: str, threads: int,
                   r: dict[str, Any]) -> list[Figure]:
    where = (f"{arch} {case['image_size']}px, {case['frames']} frames, keyframes every {case['every']}, "
             f"{case['points_per_side']}x{case['points_per_side']} clicks, {r['objects']} objects, {device} {dtype}, "
             f"{threads} thread(s)")
    auto = r["walk"] + r["final"]
    floor = (r["walk"] - r["generator"] + r["decoder"] + r["final"]) / r["prompted"]
    note = (f"walk {r['walk']:.2f} s, of which generator {r['generator']:.2f} s on {r['generated']} of "
            f"{r['keyframes']} keyframes (its mask decoder {r['decoder']:.2f} s, {r['clicks']} of {r['grid']} clicks "
            f"decoded, the rest on known objects) and tracking keyframe to keyframe "
            f"{r['walk'] - r['generator']:.2f} s; final pass after the walk {r['final']:.2f} s (the keyframes objects "
            f"were found on not encoded again); with the generator's post-processing free: {floor:.2f}x")
    return [
        figure("automatic", f"prompts=auto, whole video ({where})", auto, "s"),
        figure("automatic", f"same objects prompted, whole video ({where})", r["prompted"], "s"),
        figure("automatic", f"overhead of discovery, auto / prompted ({where})", auto / r["prompted"], "x",
               target="<= 1.5", note=note),
    ]


def _case_figures(arch: str, case: dict[str, Any], dtype: str, device: str, threads: int,
                  r: dict[str, Any]) -> list[Figure]:
    where = (f"{arch} {case['image_size']}px, {case['width']}x{case['height']} frame, "
             f"{case['points_per_side']}x{case['points_per_side']} clicks, {device} {dtype}, {threads} thread(s)")
    note = f"{r['masks']} masks kept; {r['shared'] / r['clicks'] * 1e3:.2f} ms per click"
    return [
        figure("automatic", f"generator, own encoder pass ({where})", r["own"] * 1e3, "ms/keyframe"),
        figure("automatic", f"generator on shared features ({where})", r["shared"] * 1e3, "ms/keyframe", note=note),
        figure("automatic", f"image encoder pass alone ({where})", r["encode"] * 1e3, "ms/keyframe"),
        figure("automatic", f"mask decoder, image repeated per click / shared ({where}, {r['batch']} clicks)",
               r["decode_repeated"] / r["decode_shared"], "x",
               note=(f"{r['decode_repeated'] / r['batch'] * 1e3:.2f} vs {r['decode_shared'] / r['batch'] * 1e3:.2f} "
                     f"ms per click; {'the same' if r['decode_same'] else 'DIFFERENT'} logits")),
    ]


def run_section(cfg: dict[str, Any], seed: int, threads: int) -> list[Figure]:
    """The report's ``automatic`` section: the CPU cases; the CUDA cases when a GPU is present."""
    c = {**DEFAULTS, **cfg}
    out = []
    for device, key in (("cpu", "cases"), ("cuda", "cuda_cases")):
        if device == "cuda" and not torch.cuda.is_available():
            out.append(figure("automatic", "CUDA generator", None, "", note="skipped: no CUDA device"))
            continue
        dtype = c["dtype"] if device == "cpu" else c["cuda_dtype"]
        for case in c[key]:
            r = run_isolated(measure, threads, arch=c["arch"], dtype=dtype, pred_iou_thresh=c["pred_iou_thresh"],
                             stability_score_thresh=c["stability_score_thresh"], warmup=c["warmup"],
                             runs=c["runs"], seed=seed, device=device, **case)
            out += _case_figures(c["arch"], case, dtype, device, threads, r)
        if device == "cpu" and c["matching"]:
            m = c["matching"]
            for known in m["known"]:
                r = run_isolated(measure_matching, threads, height=m["height"], width=m["width"], known=known,
                                 new=m["new"], runs=m["runs"], seed=seed)
                out += _matching_figures(m, known, threads, r)
        for case in c["video_cases" if device == "cpu" else "cuda_video_cases"]:
            r = run_isolated(measure_video, threads, arch=c["arch"], dtype=dtype,
                             pred_iou_thresh=c["pred_iou_thresh"], stability_score_thresh=c["stability_score_thresh"],
                             seed=seed, device=device, **case)
            out += _video_figures(c["arch"], case, dtype, device, threads, r)
    return out


def main() -> None:
    """Print the section's table for one device (defaults above)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    parser.add_argument("--runs", type=int, default=DEFAULTS["runs"])
    args = parser.parse_args()
    cfg = {"warmup": args.warmup, "runs": args.runs}
    if args.device == "cuda":
        cfg["cases"] = cfg["video_cases"] = []
        cfg["matching"] = {}
    else:
        cfg["cuda_cases"] = cfg["cuda_video_cases"] = []
    figures = [f for f in run_section(cfg, args.seed, args.threads) if f.value is not None]
    print(format_table(figures))


if __name__ == "__main__":
    main()
