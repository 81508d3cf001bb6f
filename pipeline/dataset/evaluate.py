"""Dataset-level evaluation: pair ground-truth and predicted videos, score each video in a Ray task, tabulate.

Predictions are either the output prefix of a propagation job (``masklets/{video_id}.json|parquet``) or a folder
of per-video PNG folders (DAVIS or SA-V layout). Ground truth is a folder of SA-V JSON files or PNG folders.
Each task reads its own files; only per-object score rows and frame counts come back to the driver. A prediction
that tracked every k-th frame or a clip is scored at the ground-truth frames it holds (``metrics.common_frames``),
and the report says how many that was against the ground truth's.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field

import numpy as np
import ray

from pipeline.dataset.annotations import find_annotations, read_annotation
from pipeline.dataset.metrics import ObjectScore, common_frames, evaluate_video, scored_frames
from pipeline.io.masklets import Masklets
from pipeline.dataset.predictions import find_predictions, is_masklet_file, read_prediction

log = logging.getLogger(__name__)


@dataclass
class EvalReport:
    """Per-object scores of every evaluated video, videos that failed (id → reason), videos lacking predictions,
    and per scored video (frames scored, ground-truth frames a prediction of every frame is scored on)."""

    scores: list[ObjectScore] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    frames: dict[str, tuple[int, int]] = field(default_factory=dict)

    def partial(self) -> dict[str, tuple[int, int]]:
        """The videos scored at fewer frames than the ground truth has (their prediction lacks the others)."""
        return {v: (n, of) for v, (n, of) in self.frames.items() if n < of}

    def means(self) -> tuple[float, float, float]:
        """Global (J&F, J, F) in percent: unweighted means over all objects of all videos (nan if none)."""
        if not self.scores:
            return float("nan"), float("nan"), float("nan")
        j = float(np.mean([s.j for s in self.scores]))
        f = float(np.mean([s.f for s in self.scores]))
        return (j + f) / 2, j, f


def read_pair(video_id: str, gt_uris: list[str], pred_uri: str, storage_options: dict | None,
              annotation_step: int) -> tuple[Masklets, Masklets]:
    """One video's ground truth (SA-V JSON positions × ``annotation_step`` = frame numbers) and prediction.

    A masklet file's ``frame_count`` is its video's: ground truth on a frame past it means the two number frames
    differently (a prediction made on a folder of the 6-fps frames against 24 fps numbering), which scoring at the
    common frames would hide, so it is refused (ValueError naming the video)."""
    gt = read_annotation(gt_uris, video_id, storage_options, annotation_step)
    pred = read_prediction(pred_uri, video_id, storage_options)
    last = max(gt.frame_indices, default=-1)
    if is_masklet_file(pred_uri) and last >= pred.frame_count:
        raise ValueError(f"video {video_id}: the ground truth has frame {last} but the prediction's video has "
                         f"{pred.frame_count} frames: the two number frames differently (annotation_step="
                         f"{annotation_step}; a prediction made on a folder of the annotated frames only needs "
                         f"annotation_step=1) or the video is shorter than the annotated one")
    return gt, pred


def evaluate_one(video_id: str, gt_uris: list[str], pred_uri: str, storage_options: dict | None,
                 skip_first_last: bool, annotation_step: int) -> list[ObjectScore]:
    """Read one video's ground truth and prediction and score it."""
    return evaluate_video(*read_pair(video_id, gt_uris, pred_uri, storage_options, annotation_step), skip_first_last)


@ray.remote(num_cpus=1)
def _evaluate_task(video_id: str, gt_uris: list[str], pred_uri: str, storage_options: dict | None,
                   skip_first_last: bool, annotation_step: int
                   ) -> tuple[str, list[ObjectScore], tuple[int, int], str | None]:
    try:
        gt, pred = read_pair(video_id, gt_uris, pred_uri, storage_options, annotation_step)
        frames = (len(common_frames(gt, pred, skip_first_last)), len(scored_frames(gt.frame_indices, skip_first_last)))
        return video_id, evaluate_video(gt, pred, skip_first_last), frames, None
    except Exception as e:  # one bad video must not stop the evaluation; the reason goes to the report
        return video_id, [], (0, 0), f"{type(e).__name__}: {e}"


def evaluate_dataset(gt: str, pred: str, storage_options: dict | None = None, *, skip_first_last: bool = True,
                     strict: bool = True, annotation_step: int = 4, ray_address: str | None = None,
                     num_cpus: int | None = None) -> EvalReport:
    """Score every ground-truth video against its prediction, one Ray task per video.

    ``strict``: every ground-truth video must have a prediction (else ValueError listing the missing ones);
    otherwise missing videos are reported and skipped. Ray: joins ``ray_address`` or starts a local instance.
    """
    gt_videos = find_annotations(gt, storage_options)
    preds = find_predictions(pred, storage_options)
    missing = sorted(set(gt_videos) - set(preds))
    if missing and strict:
        raise ValueError(f"{pred}: no predictions for {len(missing)} ground-truth video(s): {missing[:20]}")
    report = EvalReport(missing=missing)
    todo = [v for v in gt_videos if v in preds]
    if not todo:
        return report
    if not ray.is_initialized():
        if ray_address is None:  # "local": a new instance, never a cluster some other process started here
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
        else:
            ray.init(address=ray_address)
    refs = [_evaluate_task.remote(v, gt_videos[v], preds[v], storage_options, skip_first_last, annotation_step)
            for v in todo]
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        video_id, rows, frames, error = ray.get(ready[0])
        if error is not None:
            log.error("video %s: evaluation failed: %s", video_id, error)
            report.failed[video_id] = error
            continue
        report.scores.extend(rows)
        report.frames[video_id] = frames
    report.scores.sort(key=lambda s: (s.video_id, s.obj_id))
    return report


def objects_csv(scores: list[ObjectScore]) -> str:
    """CSV of per-object scores (unrounded percentages)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video_id", "obj_id", "J&F", "J", "F", "frames"])
    for s in scores:
        w.writerow([s.video_id, s.obj_id, repr(s.jf), repr(s.j), repr(s.f), s.frames])
    return buf.getvalue()


def videos_csv(scores: list[ObjectScore], frames: dict[str, tuple[int, int]]) -> str:
    """CSV of per-video scores: means over each video's objects (unrounded percentages), the frames scored and the
    ground-truth frames a prediction of every frame is scored on (``EvalReport.frames``)."""
    by_video: dict[str, list[ObjectScore]] = {}
    for s in scores:
        by_video.setdefault(s.video_id, []).append(s)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video_id", "J&F", "J", "F", "objects", "frames", "gt_frames"])
    for video_id, rows in sorted(by_video.items()):
        j = float(np.mean([s.j for s in rows]))
        f = float(np.mean([s.f for s in rows]))
        w.writerow([video_id, repr((j + f) / 2), repr(j), repr(f), len(rows), *frames[video_id]])
    return buf.getvalue()
