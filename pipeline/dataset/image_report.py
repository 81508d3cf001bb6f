"""The report of an image run (``jobs.segment_images``): ``{out}/index.html`` with the run's facts, a contact sheet of
its images with their masks, each labelled with its object id (and category), and the random-weights banner when it
applies; failed images are listed with their reasons.

The images are read from the prefix's COCO file(s) (``annotations*.json``): ``file_name`` under the run's
``data.root`` (from its recorded ``config.yaml``, or the one given), as the job read them (upright, RGB).
"""

from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image, ImageDraw

from pipeline.actor.image_loading import ImageError, read_image
from pipeline.dataset.render import (BANNER, RANDOM_WARNING, SheetOptions, _text_size, _wrap, font, object_color,
                                     overlay, png_bytes, thumbnail)
from pipeline.dataset.report import _banner, _e, _fact, _page
from pipeline.io.rle import decode_rle
from pipeline.io.storage import is_absolute_uri, join_uri, list_names, read_bytes, write_bytes

_EMPTY_TILE = (225, 225, 230)


def coco_files(prefix: str, storage_options: dict | None = None) -> list[str]:
    """Names of the COCO files an image run wrote under ``prefix`` (none: not an image run's prefix)."""
    try:
        names = list_names(prefix, storage_options)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith("annotations") and n.endswith(".json"))


def _recorded_root(prefix: str, storage_options: dict | None) -> str | None:
    for name in sorted(n for n in list_names(prefix, storage_options) if n.startswith("config")):
        config = yaml.safe_load(read_bytes(join_uri(prefix, name), storage_options)) or {}
        root = (config.get("data") or {}).get("root")
        if root:
            return root
    return None


def _tile(image: np.ndarray, anns: list[dict], width: int, alpha: float) -> Image.Image:
    """The image with its masks overlaid, scaled to ``width``, each mask tagged with its id (and category)."""
    masks = [decode_rle(a["segmentation"]) for a in anns]
    shown = overlay(image, masks, [object_color(a["obj_id"]) for a in anns], alpha)
    thumb = Image.fromarray(thumbnail(shown, width))
    draw = ImageDraw.Draw(thumb)
    f = font(max(8, min(14, width // 12)))
    scale = width / image.shape[1]
    for ann, mask in zip(anns, masks):
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        label = f"{ann['obj_id']}" + (f" c{ann['category_id']}" if ann.get("category_id") is not None else "")
        tw, th = _text_size(draw, label, f)
        x = min(max(0, int(cols[0] * scale)), max(0, thumb.width - tw - 4))
        y = min(max(0, int(rows[0] * scale)), max(0, thumb.height - th - 4))
        draw.rectangle((x, y, x + tw + 3, y + th + 3), fill=object_color(ann["obj_id"]))
        draw.text((x + 2, y + 1), label, fill=(0, 0, 0), font=f)
    return thumb


def _missing_tile(reason: str, width: int) -> Image.Image:
    tile = Image.new("RGB", (width, max(40, width * 3 // 4)), _EMPTY_TILE)
    draw = ImageDraw.Draw(tile)
    f = font(max(8, min(12, width // 16)))
    step = _text_size(draw, "Ag", f)[1] + 3
    for i, line in enumerate(_wrap(draw, reason, f, width - 8)[:6]):
        draw.text((4, 4 + i * step), line, fill=(60, 60, 60), font=f)
    return tile


def image_sheet(tiles: list[tuple[str, Image.Image]], opts: SheetOptions, random: bool) -> Image.Image:
    """The contact sheet: the random-weights banner when it applies, then the tiles captioned with their image ids."""
    gap, columns = opts.gap, max(1, min(opts.columns, len(tiles)))
    f = font(max(8, min(14, opts.width // 12)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = _text_size(probe, "Ag0", f)[1] + 4
    rows = (len(tiles) + columns - 1) // columns
    tile_h = max(t.height for _, t in tiles) + line
    width = gap + columns * (opts.width + gap)
    top = gap + (line + 4 if random else 0)
    sheet = Image.new("RGB", (width, top + rows * (tile_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if random:
        draw.rectangle((0, 0, width, line + 4), fill=BANNER)
        draw.text((4, 2), RANDOM_WARNING, fill=(255, 255, 255), font=f)
    for i, (caption, tile) in enumerate(tiles):
        r, c = divmod(i, columns)
        x0, y0 = gap + c * (opts.width + gap), top + r * (tile_h + gap)
        sheet.paste(tile, (x0, y0))
        draw.text((x0, y0 + tile.height + 1), caption, fill=(30, 30, 30), font=f)
    return sheet


def image_report(prefix: str, out: str, data_root: str | None, opts: SheetOptions, count: int,
                 storage_options: dict | None = None) -> tuple[str, int, int]:
    """Write the report of the image run under ``prefix``; returns (index URI, images, annotations). ValueError when
    ``prefix`` holds no COCO file of an image run."""
    so = storage_options
    files = coco_files(prefix, so)
    if not files:
        raise ValueError(f"{prefix}: no annotations*.json: not the output prefix of a jobs.segment_images run")
    docs = [json.loads(read_bytes(join_uri(prefix, name), so)) for name in files]
    images = sorted((img for d in docs for img in d["images"]), key=lambda i: (isinstance(i["id"], str), i["id"]))
    anns: dict = {}
    for d in docs:
        for a in d["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
    random = any((d.get("info") or {}).get("random_weights") for d in docs)
    summaries = [json.loads(read_bytes(join_uri(prefix, n), so)) for n in list_names(prefix, so)
                 if n.startswith("summary") and n.endswith(".json")]
    failed = {i: r for s in summaries for i, r in (s.get("failed_images") or {}).items()}
    root = data_root or _recorded_root(prefix, so)
    tiles = []
    for img in images[:count]:
        uri = img["file_name"]
        if not is_absolute_uri(uri) and root:
            uri = join_uri(root, uri)
        objects = sorted(anns.get(img["id"], []), key=lambda a: a["obj_id"])
        try:
            tile = _tile(read_image(uri, so), objects, opts.width, opts.alpha)
        except ImageError as exc:
            tile = _missing_tile(f"cannot show it: {exc}", opts.width)
        tiles.append((f"{img['id']}: {len(objects)} objects", tile))
    if tiles:
        write_bytes(join_uri(out, "images.png"), png_bytes(image_sheet(tiles, opts, random)), so)
    categories: dict = {}
    for a in (a for objs in anns.values() for a in objs):
        categories[a["category_id"]] = categories.get(a["category_id"], 0) + 1
    model = next((s.get("model") for s in summaries if s.get("model")), "?")
    body = [f'<h1>sam2-propagate image report</h1><p class="muted">{_e(prefix)}</p>', _banner(random),
            '<div class="facts">', _fact("model", model), _fact("images", len(images)),
            _fact("annotations", sum(len(v) for v in anns.values())), _fact("failed images", len(failed)), "</div>",
            f"<h2>Contact sheet (the first {len(tiles)} images; labels: object id, c category)</h2>"]
    body.append('<img class="sheet" src="images.png" alt="contact sheet of the images">' if tiles
                else '<p class="muted">no images</p>')
    body.append("<h2>Categories</h2><table><tr><th>category</th><th>annotations</th></tr>")
    body += [f"<tr><td>{_e(c)}</td><td>{n}</td></tr>" for c, n in sorted(categories.items(), key=lambda kv: str(kv[0]))]
    body.append("</table>")
    if failed:
        body.append("<h2>Failed images</h2><table><tr><th>image</th><th>reason</th></tr>")
        body += [f"<tr><td>{_e(i)}</td><td>{_e(r)}</td></tr>" for i, r in sorted(failed.items())]
        body.append("</table>")
    index = join_uri(out, "index.html")
    write_bytes(index, _page("image report - sam2-propagate", "".join(body)).encode(), so)
    return index, len(images), sum(len(v) for v in anns.values())
