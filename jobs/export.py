"""Masklets of a propagation run in other tools' formats: ``python -m jobs.export prefix=URI format=…``
(davis, sav_png, ytvis, yolo; see ``pipeline.dataset.export``)."""

from __future__ import annotations

from jobs.edge import EXIT_FAILED, EXIT_OK, Job
from pipeline.dataset.export import YtvisWriter, export_masklets
from pipeline.dataset.predictions import each_video, find_predictions, read_prediction, select_videos
from pipeline.dataset.specs import ExportSpec
from pipeline.io.storage import join_uri
from pipeline.specs import SpecError


def export(spec: ExportSpec) -> int:
    """Export every selected video; a video that fails is reported and the others go on (exit 1 at the end)."""
    so, fmt = spec.storage_options, spec.format
    out = spec.out or join_uri(spec.prefix, f"export_{fmt}")
    try:
        sources = select_videos(find_predictions(spec.prefix, so), spec.videos, spec.prefix)
    except ValueError as e:
        raise SpecError(f"prefix={e}") from e
    if fmt == "ytvis":
        writer = YtvisWriter(out, so)
        failed = each_video(sources, lambda v, uri: f"{writer.add(read_prediction(uri, v, so))} objects", "export")
        if writer.videos:
            out = writer.finish()
    else:
        failed = each_video(
            sources, lambda v, uri: f"{export_masklets(read_prediction(uri, v, so), out, fmt, so)} files", "export")
    print(f"exported {len(sources) - failed} videos to {out} ({fmt}); {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


JOB = Job("export", "export", ExportSpec, export)

if __name__ == "__main__":
    JOB.main()
