"""HTML report of a propagation run: ``python -m jobs.report prefix=URI`` (pages under ``{prefix}/report``;
``pipeline.dataset.report``), or of an image run (``pipeline.dataset.image_report``)."""

from __future__ import annotations

from jobs.edge import EXIT_OK, Job
from pipeline.dataset.image_report import coco_files, image_report
from pipeline.dataset.report import report_run
from pipeline.dataset.specs import ReportSpec
from pipeline.io.storage import join_uri


def report(spec: ReportSpec) -> int:
    """Write the report; videos whose sheet or masklets cannot be read are listed in it with the reason. The prefix
    of an image run (``jobs.segment_images``) gets the image report: a contact sheet of its first ``sheet.frames``
    images with their masks."""
    if coco_files(spec.prefix, spec.storage_options):
        frames = spec.sheet.frames
        index, images, annotations = image_report(
            spec.prefix, spec.out or join_uri(spec.prefix, "report"), spec.data_root, spec.sheet.options(spec.alpha),
            frames if isinstance(frames, int) else len(frames), spec.storage_options)
        print(f"report of {images} images ({annotations} annotations): {index}")
        return EXIT_OK
    index, rows, where = report_run(spec)
    print(f"videos from {where}")
    print(f"report of {len(rows)} videos ({sum(r.failure is not None for r in rows)} failed): {index}")
    return EXIT_OK


JOB = Job("report", "report", ReportSpec, report)

if __name__ == "__main__":
    JOB.main()
