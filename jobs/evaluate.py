"""J&F of predicted masklets against ground truth: ``python -m jobs.evaluate pred=URI gt=URI``.

Writes ``eval_objects.csv`` and ``eval_videos.csv``; the last line printed is ``J&F <x> J <y> F <z>`` (percent),
after the count of frames scored (a strided or clipped prediction is scored at the ground-truth frames it has).
"""

from __future__ import annotations

import logging

from jobs.edge import EXIT_FAILED, EXIT_OK, Job
from pipeline.dataset.evaluate import evaluate_dataset, objects_csv, videos_csv
from pipeline.dataset.specs import EvaluateSpec
from pipeline.io.storage import join_uri, write_bytes

log = logging.getLogger("evaluate")


def evaluate(spec: EvaluateSpec) -> int:
    """Evaluate, write the CSVs, print the global scores; exit 1 if any video failed."""
    so = spec.storage_options
    report = evaluate_dataset(spec.gt, spec.pred, so, skip_first_last=spec.skip_first_last, strict=spec.strict,
                              annotation_step=spec.annotation_step, ray_address=spec.cluster.address,
                              num_cpus=spec.cluster.num_cpus)
    out = spec.out or spec.pred
    write_bytes(join_uri(out, "eval_objects.csv"), objects_csv(report.scores).encode(), so)
    write_bytes(join_uri(out, "eval_videos.csv"), videos_csv(report.scores, report.frames).encode(), so)
    for video_id in report.missing:
        log.warning("video %s: no prediction, not scored", video_id)
    for video_id, reason in report.failed.items():
        print(f"FAILED {video_id}: {reason}")
    videos = len({s.video_id for s in report.scores})
    print(f"{len(report.scores)} objects in {videos} videos; {len(report.failed)} failed, "
          f"{len(report.missing)} without prediction; CSVs in {out}")
    partial = report.partial()
    for video_id, (n, of) in partial.items():
        print(f"video {video_id}: scored at {n} of {of} ground-truth frames (the prediction lacks the others)")
    print(f"frames scored: {sum(n for n, _ in report.frames.values())} of "
          f"{sum(of for _, of in report.frames.values())} ground-truth frames; {len(partial)} videos scored at "
          f"the frames their prediction has")
    jf, j, f = report.means()
    print(f"J&F {jf} J {j} F {f}")
    return EXIT_FAILED if report.failed else EXIT_OK


JOB = Job("evaluate", "evaluate", EvaluateSpec, evaluate)

if __name__ == "__main__":
    JOB.main()
