"""Masklets over their videos as mp4 + contact sheet: ``python -m jobs.render prefix=URI``. Only the frames the run
tracked are drawn, under their original numbers; a strided run's mp4 plays at the video's rate over the step."""

from __future__ import annotations

from jobs.edge import EXIT_FAILED, EXIT_OK, Job
from pipeline.actor.decoding import open_video
from pipeline.dataset.frames import frame_stride
from pipeline.dataset.predictions import each_video, find_predictions, read_prediction, select_videos, videos_of
from pipeline.dataset.render import pick_positions, render_sheet, render_video
from pipeline.dataset.specs import RenderSpec
from pipeline.io.storage import join_uri, write_bytes
from pipeline.specs import SpecError

FOLDER_FPS = 24.0  # frame folders carry no rate; SA-V videos are 24 fps


def render(spec: RenderSpec) -> int:
    """Render every selected video; one that fails is reported and the others go on (exit 1 at the end)."""
    so = spec.storage_options
    out = spec.out or join_uri(spec.prefix, "render")
    opts = spec.sheet.options(spec.alpha)
    try:
        sources = select_videos(find_predictions(spec.prefix, so), spec.videos, spec.prefix)
        videos, where = videos_of(spec.prefix, sources, spec.manifest, spec.data_root, spec.video_uri, so)
    except (ValueError, OSError) as e:
        raise SpecError(f"prefix={spec.prefix}: cannot locate the videos: {e}") from e

    def one(video_id: str, uri: str) -> str:
        if video_id not in videos:
            raise ValueError(f"not in {where}")
        m = read_prediction(uri, video_id, so)
        with open_video(videos[video_id], so, decoder=spec.decoder) as video:
            if spec.mp4:
                fps = spec.fps or (video.fps or FOLDER_FPS) / frame_stride(m.frame_indices)
                mp4, sheet = render_video(m, video.iter_frames(m.frame_indices), fps, opts.alpha, opts.frames,
                                          opts.columns, opts.width, opts.gap)
                write_bytes(join_uri(out, f"{video_id}.mp4"), mp4, so)
            else:
                picks = [m.frame_indices[p] for p in pick_positions(m, opts.frames)]
                sheet = render_sheet(m, video.iter_frames(picks), opts)
        write_bytes(join_uri(out, f"{video_id}_sheet.png"), sheet, so)
        return f"{len(m.frame_indices)} frames rendered" if spec.mp4 else "contact sheet rendered"

    print(f"videos from {where}")
    failed = each_video(sources, one, "render")
    print(f"rendered {len(sources) - failed} videos to {out}; {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


JOB = Job("render", "render", RenderSpec, render)

if __name__ == "__main__":
    JOB.main()
