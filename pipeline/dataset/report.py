"""HTML report of a propagation run: ``{out}/index.html`` for the job and ``{out}/{video_id}.html`` per video.

The job page has the run's facts (model, checkpoint, counts, speed from ``summary*.json``), the failures with their
reasons (``_state/failed/*.json`` and the summaries) and one row per video with its presence timeline and contact
sheet. A video page has the contact sheet, a presence timeline per object (frames where its mask is non-empty,
prompted frames marked), the object scores over the frames, and a table per object. Frames are the ones the run
tracked (every k-th, a clip), laid out one after another and labelled with their original numbers; the pages say
which they are (``121 of 483 frames: every 4th, 0-480``). Masklets made with random
weights get a red banner on every page. Plain HTML with inline SVG and the sheets as PNG files beside the pages: no
scripts, nothing fetched from elsewhere.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.actor.decoding import open_video
from pipeline.dataset.frames import describe_frames
from pipeline.dataset.predictions import (find_predictions, locate_videos, manifest_tasks, read_prediction,
                                          resolve_data, select_videos)
from pipeline.dataset.render import (RANDOM_WARNING, SheetOptions, color_hex, pick_positions, random_weights,
                                     render_sheet)
from pipeline.dataset.specs import ReportSpec
from pipeline.io.masklets import Masklets
from pipeline.io.storage import join_uri, list_sizes, read_bytes, write_bytes
from pipeline.specs import SpecError

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f6f8;color:#1c1c22}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:24px 0 8px}
a{color:#2355c8}.muted{color:#666}
.banner{background:#c81e1e;color:#fff;font-weight:600;padding:10px 14px;border-radius:6px;margin:12px 0}
.facts{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0}
.fact{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 12px}
.fact b{display:block;font-size:18px}
table{border-collapse:collapse;background:#fff;border:1px solid #ddd;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eee;vertical-align:middle;font-size:14px}
th{background:#fafafc;font-weight:600}
.failed td{background:#fff4f4}.reason{font-family:ui-monospace,monospace;font-size:13px;white-space:pre-wrap}
.sheet{max-width:100%;border:1px solid #ccc;border-radius:4px;background:#222}
.thumb{height:72px;border:1px solid #ccc;border-radius:3px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
svg text{font-family:system-ui,sans-serif;font-size:11px;fill:#333}
"""


@dataclass
class VideoEntry:
    """One video's page: its masklets, prompted frames per object, and its contact sheet or why there is none."""

    video_id: str
    masklets: Masklets
    prompt_frames: dict[int, list[int]] = field(default_factory=dict)
    sheet: str | None = None          # file name of the contact sheet beside the pages
    sheet_error: str | None = None    # why there is no sheet


def areas(m: Masklets) -> np.ndarray:
    """Mask area in pixels, ``[n_objects, n_frames]``, from the RLEs (no decoding)."""
    out = np.zeros((len(m.obj_ids), len(m.frame_indices)), dtype=np.int64)
    for pos, rles in enumerate(m.rles):
        coded = [{"size": r["size"], "counts": r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]}
                 for r in rles]
        if coded and not isinstance(coded[0]["counts"], list):
            out[:, pos] = mask_utils.area(coded)
        else:
            out[:, pos] = [int(np.sum(r["counts"][1::2])) for r in coded]
    return out


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def timeline_svg(m: Masklets, area: np.ndarray, prompts: dict[int, list[int]], width: int = 900,
                 compact: bool = False) -> str:
    """Inline SVG: one row per object, a bar over every frame where its mask is non-empty, prompts as triangles."""
    label_w, row_h = (0, 8) if compact else (70, 18)
    n = max(1, len(m.frame_indices))
    plot_w = width - label_w - 4
    axis_h = 0 if compact else 16
    height = len(m.obj_ids) * row_h + axis_h + 2
    step = plot_w / n
    pos_of = {f: p for p, f in enumerate(m.frame_indices)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="presence timeline of {_e(m.video_id)}">']
    for j, obj in enumerate(m.obj_ids):
        y = j * row_h + 1
        color = color_hex(obj)
        parts.append(f'<rect x="{label_w}" y="{y}" width="{plot_w:.1f}" height="{row_h - 2}" fill="#ececf0"/>')
        if not compact:
            parts.append(f'<text x="0" y="{y + row_h - 5}">id {obj}</text>')
        present = area[j] > 0
        pos = 0
        while pos < n:
            if present[pos]:
                end = pos
                while end + 1 < n and present[end + 1]:
                    end += 1
                parts.append(f'<rect x="{label_w + pos * step:.1f}" y="{y}" width="{(end - pos + 1) * step:.1f}" '
                             f'height="{row_h - 2}" fill="{color}"><title>id {obj}: frames '
                             f'{m.frame_indices[pos]}-{m.frame_indices[end]}</title></rect>')
                pos = end + 1
            else:
                pos += 1
        if not compact:
            for f in prompts.get(obj, []):
                if f in pos_of:
                    cx = label_w + (pos_of[f] + 0.5) * step
                    parts.append(f'<path d="M{cx - 5:.1f},{y + row_h - 2} L{cx + 5:.1f},{y + row_h - 2} '
                                 f'L{cx:.1f},{y + 3}" fill="#111" stroke="#fff" stroke-width="1">'
                                 f'<title>id {obj}: prompt on frame {f}</title></path>')
    if not compact:
        y = len(m.obj_ids) * row_h + 13
        ticks = sorted({0, n - 1, *range(0, n, max(1, n // 8))})
        for p in ticks:
            parts.append(f'<text x="{label_w + (p + 0.5) * step:.1f}" y="{y}" text-anchor="middle">'
                         f'{m.frame_indices[p]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def scores_svg(m: Masklets, width: int = 900, height: int = 180) -> str:
    """Inline SVG: each object's score over the frames (its colour), the zero line dashed (> 0: present)."""
    values = np.asarray(m.scores, dtype=np.float64).T if m.scores else np.zeros((len(m.obj_ids), 0))
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return '<p class="muted">no object scores recorded</p>'
    lo, hi = float(min(finite.min(), 0.0)), float(max(finite.max(), 0.0))
    if math.isclose(lo, hi):
        lo, hi = lo - 1, hi + 1
    left, top, bottom = 50, 8, 20
    plot_w, plot_h = width - left - 8, height - top - bottom
    n = max(1, values.shape[1])

    def x(p: int) -> float:
        return left + (p + 0.5) * plot_w / n

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="object scores of {_e(m.video_id)}">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#ddd"/>',
             f'<line x1="{left}" x2="{left + plot_w}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999" '
             f'stroke-dasharray="4 3"/>',
             f'<text x="{left - 4}" y="{y(hi) + 4:.1f}" text-anchor="end">{hi:.2f}</text>',
             f'<text x="{left - 4}" y="{y(lo):.1f}" text-anchor="end">{lo:.2f}</text>',
             *([f'<text x="{left - 4}" y="{y(0) + 4:.1f}" text-anchor="end">0</text>']
               if min(y(0) - y(hi), y(lo) - y(0)) > 14 else []),
             f'<text x="{left}" y="{height - 4}">frame {m.frame_indices[0]}</text>',
             f'<text x="{left + plot_w}" y="{height - 4}" text-anchor="end">frame {m.frame_indices[-1]}</text>']
    for j, obj in enumerate(m.obj_ids):
        points = " ".join(f"{x(p):.1f},{y(v):.1f}" for p, v in enumerate(values[j]) if math.isfinite(v))
        if points:
            parts.append(f'<polyline points="{points}" fill="none" stroke="{color_hex(obj)}" stroke-width="2">'
                         f'<title>id {obj}</title></polyline>')
    parts.append("</svg>")
    return "".join(parts)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body><main>{body}</main></body></html>")


def _banner(random: bool) -> str:
    return f'<div class="banner">{_e(RANDOM_WARNING)}</div>' if random else ""


def _fact(label: str, value: object) -> str:
    return f'<div class="fact"><span class="muted">{_e(label)}</span><b>{_e(value)}</b></div>'


def video_page(entry: VideoEntry) -> str:
    """HTML of one video's page."""
    m = entry.masklets
    area = areas(m)
    prov = m.provenance
    body = [f'<p><a href="index.html">&larr; all videos</a></p><h1>{_e(m.video_id)}</h1>', _banner(random_weights(m)),
            '<div class="facts">', _fact("model", prov.get("model", "?")),
            _fact("checkpoint", str(prov.get("checkpoint", "?")).rsplit("/", 1)[-1]),
            _fact("size", f"{m.width}x{m.height}"), _fact("frames", describe_frames(m.frame_indices, m.frame_count)),
            _fact("objects", len(m.obj_ids)), "</div>", "<h2>Contact sheet</h2>"]
    if entry.sheet:
        body.append(f'<img class="sheet" src="{_e(entry.sheet)}" alt="contact sheet of {_e(m.video_id)}">')
    else:
        body.append(f'<p class="muted">no contact sheet: {_e(entry.sheet_error)}</p>')
    body += ["<h2>Presence (mask non-empty; &#9650; prompt)</h2>", timeline_svg(m, area, entry.prompt_frames),
             "<h2>Object scores (the model's logit; &gt; 0: object present)</h2>", scores_svg(m), "<h2>Objects</h2>",
             "<table><tr><th>id</th><th>first frame</th><th>frames present</th><th>mean area (px)</th>"
             "<th>mean score</th><th>prompts on frames</th></tr>"]
    scores = np.asarray(m.scores, dtype=np.float64).reshape(len(m.frame_indices), len(m.obj_ids))
    for j, obj in enumerate(m.obj_ids):
        present = area[j] > 0
        first = m.frame_indices[int(np.argmax(present))] if present.any() else "never"
        col = scores[:, j][np.isfinite(scores[:, j])]
        body.append(f'<tr><td><span class="swatch" style="background:{color_hex(obj)}"></span>{obj}</td>'
                    f"<td>{first}</td><td>{int(present.sum())} / {len(present)}</td>"
                    f"<td>{int(area[j][present].mean()) if present.any() else 0}</td>"
                    f"<td>{f'{col.mean():.3f}' if col.size else '-'}</td>"
                    f"<td>{_e(', '.join(map(str, entry.prompt_frames.get(obj, []))) or '-')}</td></tr>")
    body.append("</table>")
    return _page(f"{m.video_id} - sam2-propagate", "".join(body))


@dataclass
class IndexRow:
    """What the job page shows of one video (its masklets are not kept once its page is written)."""

    video_id: str
    frames: int = 0
    tracked: str = ""                 # which frames (describe_frames)
    objects: int = 0
    timeline: str = ""
    sheet: str | None = None
    sheet_error: str | None = None
    failure: str | None = None
    model: str | None = None
    checkpoint: str | None = None
    random: bool = False


def index_page(prefix: str, rows: list[IndexRow], summaries: dict[str, dict]) -> str:
    """HTML of the job page: facts, failures with reasons, every video."""
    done = [r for r in rows if r.failure is None]
    failed = [r for r in rows if r.failure is not None]
    first = next(iter(summaries.values()), {})
    model = first.get("model") or next((r.model for r in done if r.model), "?")
    ckpt = first.get("checkpoint") or next((r.checkpoint for r in done if r.checkpoint), "?")
    random = any(r.random for r in done) or any(s.get("checkpoint") == "random" for s in summaries.values())
    body = [f"<h1>sam2-propagate report</h1><p class=\"muted\">{_e(prefix)}</p>", _banner(random),
            '<div class="facts">', _fact("model", model), _fact("checkpoint", str(ckpt).rsplit("/", 1)[-1]),
            _fact("videos with masklets", len(done)), _fact("failed", len(failed)),
            _fact("frames tracked", sum(r.frames for r in done))]
    for name, s in summaries.items():
        if "frames_per_second" in s:
            tag = "" if name == "summary.json" else f" ({name})"
            body.append(_fact(f"frames/s{tag}", s["frames_per_second"]))
            body.append(_fact(f"seconds{tag}", s.get("seconds", "?")))
    body.append("</div>")
    if not summaries:
        body.append('<p class="muted">no summary.json: the job has not finished (or was interrupted)</p>')
    if failed:
        body.append(f"<h2>Failures ({len(failed)})</h2><table><tr><th>video</th><th>reason</th></tr>")
        body += [f'<tr class="failed"><td>{_e(r.video_id)}</td><td class="reason">{_e(r.failure)}</td></tr>'
                 for r in failed]
        body.append("</table>")
    body.append(f"<h2>Videos ({len(rows)})</h2><table><tr><th>video</th><th>frames</th><th>objects</th>"
                "<th>presence per object</th><th>contact sheet</th></tr>")
    for r in rows:
        if r.failure is not None:
            body.append(f'<tr class="failed"><td>{_e(r.video_id)}</td><td colspan="4">failed: '
                        f'<span class="reason">{_e(r.failure)}</span></td></tr>')
            continue
        sheet = (f'<a href="{_e(r.sheet)}"><img class="thumb" src="{_e(r.sheet)}" alt="sheet of {_e(r.video_id)}">'
                 f"</a>" if r.sheet else f'<span class="muted">{_e(r.sheet_error)}</span>')
        body.append(f'<tr><td><a href="{_e(r.video_id)}.html">{_e(r.video_id)}</a></td><td>{_e(r.tracked)}</td>'
                    f"<td>{r.objects}</td><td>{r.timeline}</td><td>{sheet}</td></tr>")
    body.append("</table>")
    return _page("sam2-propagate report", "".join(body))


def read_failures(prefix: str, storage_options: dict | None = None) -> tuple[dict[str, str], dict[str, dict]]:
    """(video_id → reason of every failed video, summary file name → summary) of the prefix: the failed markers
    under ``_state/failed/`` and the ``failures`` of every ``summary*.json``."""
    summaries: dict[str, dict] = {}
    names = list_sizes(prefix, storage_options)
    for name in sorted(n for n in names if n.startswith("summary") and n.endswith(".json")):
        try:
            summaries[name] = json.loads(read_bytes(join_uri(prefix, name), storage_options))
        except ValueError as e:
            log.warning("%s: unreadable summary (%s)", join_uri(prefix, name), e)
    failures: dict[str, str] = {}
    for s in summaries.values():
        failures.update({str(v): str(r) for v, r in (s.get("failures") or {}).items()})
    failed_dir = join_uri(prefix, "_state", "failed")
    for name in sorted(list_sizes(failed_dir, storage_options)):
        if name.endswith(".json"):
            try:
                record = json.loads(read_bytes(join_uri(failed_dir, name), storage_options))
                failures[str(record.get("video_id", name[:-5]))] = str(record.get("reason", "no reason recorded"))
            except ValueError:
                failures[name[:-5]] = "unreadable failed marker"
    return failures, summaries


def report_video(entry: VideoEntry, out: str, sheet: bytes | None, storage_options: dict | None = None) -> IndexRow:
    """Write one video's sheet and page under ``out``; returns its row of the job page."""
    m = entry.masklets
    if sheet is not None:
        entry.sheet = f"{m.video_id}_sheet.png"
        write_bytes(join_uri(out, entry.sheet), sheet, storage_options)
    write_bytes(join_uri(out, f"{m.video_id}.html"), video_page(entry).encode(), storage_options)
    return IndexRow(m.video_id, len(m.frame_indices), describe_frames(m.frame_indices, m.frame_count),
                    len(m.obj_ids), timeline_svg(m, areas(m), {}, width=260, compact=True), entry.sheet,
                    entry.sheet_error,
                    model=m.provenance.get("model"), checkpoint=m.provenance.get("checkpoint"),
                    random=random_weights(m))


def write_report(prefix: str, out: str, sources: dict[str, str], read: Callable[[str, str], Masklets],
                 sheet: Callable[[Masklets], bytes], prompts: dict[str, dict[int, list[int]]],
                 storage_options: dict | None = None) -> tuple[str, list[IndexRow]]:
    """The report of the videos ``sources`` (video_id → masklet URI) plus every failed one: each video read,
    drawn and written in turn (``read(video_id, uri)``, ``sheet(masklets)``), then the job page. A video whose
    masklets cannot be read is listed as failed; one whose sheet cannot be drawn keeps its page and says why.
    Returns (the job page's URI, its rows)."""
    failures, summaries = read_failures(prefix, storage_options)
    rows = []
    for video_id, uri in sources.items():
        try:
            m = read(video_id, uri)
        except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the report
            rows.append(IndexRow(video_id, failure=f"unreadable masklets {uri}: {e}"))
            continue
        entry = VideoEntry(video_id, m, prompts.get(video_id, {}))
        data = None
        try:
            data = sheet(m)
        except Exception as e:  # noqa: BLE001 - the page is still worth having without its sheet
            entry.sheet_error = str(e)
            log.warning("video %s: no contact sheet: %s", video_id, e)
        rows.append(report_video(entry, out, data, storage_options))
        log.info("video %s: page written", video_id)
    rows += [IndexRow(v, failure=r) for v, r in sorted(failures.items()) if v not in sources]
    index = join_uri(out, "index.html")
    write_bytes(index, index_page(prefix, rows, summaries).encode(), storage_options)
    return index, rows


def _sheet(m: Masklets, uri: str | None, missing: str, opts: SheetOptions, decoder: str, so: dict | None) -> bytes:
    """The video's contact sheet, decoding only the frames it shows (``missing``: why there is no ``uri``)."""
    if uri is None:
        raise ValueError(missing)
    picks = [m.frame_indices[p] for p in pick_positions(m, opts.frames)]
    with open_video(uri, so, decoder=decoder) as video:
        return render_sheet(m, video.iter_frames(picks), opts)


def report_run(spec: ReportSpec) -> tuple[str, list[IndexRow], str]:
    """The report of the propagation run under ``spec.prefix`` (jobs.report): its videos found from the job's own
    manifest (or the one given), each with its contact sheet and prompted frames. Returns (the job page's URI, its
    rows, where the videos were found). A prefix that is no run's output, or a given manifest that cannot be read,
    is refused (SpecError); the job's own manifest being gone only costs the sheets."""
    so, prefix = spec.storage_options, spec.prefix
    out = spec.out or join_uri(prefix, "report")
    opts = spec.sheet.options(spec.alpha)
    found = find_predictions(prefix, so) if list_sizes(prefix, so) else {}
    if not found and not list_sizes(join_uri(prefix, "_state"), so):
        raise SpecError(f"prefix={prefix}: no masklets and no job state: not the output prefix of a jobs.propagate "
                        f"run")
    try:
        sources = select_videos(found, spec.videos, prefix) if found else {}
        manifest, root, where = resolve_data(prefix, sources, spec.manifest, spec.data_root, so)
    except (ValueError, OSError) as e:
        raise SpecError(f"prefix={prefix}: {e}") from e
    tasks, missing = {}, "video not in the manifest"
    if manifest:
        try:
            tasks = manifest_tasks(manifest, root, so)
        except Exception as e:  # noqa: BLE001 - the job's own manifest may be gone: report without sheets
            if spec.manifest:
                raise SpecError(f"manifest={spec.manifest}: {e}") from e
            missing = f"the job's manifest cannot be read ({str(e).splitlines()[0]}); give manifest=URI"
            log.warning("no contact sheets: %s", missing)
    videos = ({v: t.video_uri for v, t in tasks.items()} if manifest
              else locate_videos(list(sources), None, root, spec.video_uri, so))
    prompts: dict[str, dict[int, list[int]]] = {}
    for v, t in tasks.items():
        frames: dict[int, set[int]] = {}
        for p in t.prompts:
            frames.setdefault(p.obj_id, set()).add(p.frame_idx)
        prompts[v] = {o: sorted(f) for o, f in frames.items()}
    log.info("videos from %s", where)
    index, rows = write_report(
        prefix, out, sources, lambda v, uri: read_prediction(uri, v, so),
        lambda m: _sheet(m, videos.get(m.video_id), missing, opts, spec.decoder, so), prompts, so)
    return index, rows, where
