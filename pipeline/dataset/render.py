"""Masklets drawn over video frames: an mp4 (PyAV, H.264) and a PNG contact sheet, for a quick look at a job.

Each object id has one colour everywhere (hue stepped by the golden ratio per id), masks are blended in at ``alpha`` and
outlined in full colour. Frames are the masklets' own (a strided or clipped run's tracked frames only) under their
original numbers: each mp4 frame carries its number at the bottom left. The contact sheet has a title line (video,
model, checkpoint, which frames were tracked), a colour key of the object ids, and tiles separated by gaps, each with
its frame number and the id of every object present written on it; masklets made with random weights (provenance
``checkpoint == "random"``) get a red banner saying their masks are meaningless, on the sheet and on every frame of the
mp4. Text uses Pillow's built-in font (no font files). H.264 wants even sizes: odd frame sizes are padded by one black
pixel.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Iterator, Sequence

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.dataset.frames import describe_frames
from pipeline.dataset.metrics import boundary_map
from pipeline.io.masklets import Masklets
from pipeline.io.rle import decode_rle

_GOLDEN = 0.6180339887498949
BACKGROUND = (32, 32, 36)
TEXT = (235, 235, 235)
BANNER = (200, 30, 30)
RANDOM_WARNING = "RANDOM WEIGHTS: these masks are meaningless (model.checkpoint=random)"


def object_color(obj_id: int) -> tuple[int, int, int]:
    """Stable RGB colour of an object id (neighbouring ids get well separated hues)."""
    r, g, b = colorsys.hsv_to_rgb((0.1 + obj_id * _GOLDEN) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def color_hex(obj_id: int) -> str:
    """The object's colour as ``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*object_color(obj_id))


def random_weights(m: Masklets) -> bool:
    """Whether the masklets were made with random weights (their provenance says so)."""
    return m.provenance.get("checkpoint") == "random"


def overlay(frame: np.ndarray, masks: Iterable[np.ndarray], colors: Iterable[tuple[int, int, int]],
            alpha: float = 0.5) -> np.ndarray:
    """The frame (uint8 HxWx3) with each mask blended in its colour and outlined."""
    out = frame.astype(np.float32)
    edges = []
    for mask, color in zip(masks, colors):
        if not mask.any():
            continue
        c = np.asarray(color, dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * c
        edges.append((boundary_map(mask), c))
    for edge, c in edges:
        out[edge] = c
    return out.round().astype(np.uint8)


def _check_frame(m: Masklets, pos: int, frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.shape[:2] != (m.height, m.width):
        raise ValueError(f"video {m.video_id} frame {m.frame_indices[pos]}: frame is "
                         f"{frame.shape[0]}x{frame.shape[1]}, masklets are {m.height}x{m.width}")
    return frame


def overlaid_frames(m: Masklets, frames: Iterable[np.ndarray], alpha: float) -> Iterator[np.ndarray]:
    """Overlays of the masklet frames; ``frames`` yields the video frames of ``m.frame_indices`` in order."""
    colors = [object_color(o) for o in m.obj_ids]
    for pos, frame in enumerate(frames):
        yield overlay(_check_frame(m, pos, frame), (decode_rle(r) for r in m.rles[pos]), colors, alpha)


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))


class Mp4Encoder:
    """Encodes RGB frames into an in-memory H.264 mp4 (``finish`` returns the file bytes)."""

    def __init__(self, fps: float) -> None:
        self._buf = io.BytesIO()
        self._container = av.open(self._buf, mode="w", format="mp4")
        self._fps = fps
        self._stream = None

    def add(self, frame: np.ndarray) -> None:
        """Append one uint8 HxWx3 frame."""
        frame = _even(frame)
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=Fraction(self._fps).limit_denominator(1001))
            self._stream.height, self._stream.width = frame.shape[:2]
            self._stream.pix_fmt = "yuv420p"
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def finish(self) -> bytes:
        """Flush the encoder and return the mp4 bytes."""
        if self._stream is None:
            raise ValueError("no frames to encode")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        return self._buf.getvalue()


@dataclass
class SheetOptions:
    """What the contact sheet shows: ``frames`` is a count of evenly spaced frames or a list of frame indices."""

    frames: int | list[int] = 8
    columns: int = 4
    width: int = 320
    gap: int = 6
    alpha: float = 0.5
    title: bool = True


def sheet_positions(num_frames: int, count: int) -> list[int]:
    """``count`` evenly spaced positions in ``range(num_frames)`` (all of them when there are fewer)."""
    if num_frames <= count:
        return list(range(num_frames))
    return sorted({int(round(i * (num_frames - 1) / (count - 1))) for i in range(count)}) if count > 1 else [0]


def pick_positions(m: Masklets, frames: int | Sequence[int]) -> list[int]:
    """Positions in ``m.frame_indices`` of the sheet's frames: ``frames`` evenly spaced ones (an int), or exactly
    the frame indices listed (each must have masklets)."""
    if isinstance(frames, int):
        if frames < 1:
            raise ValueError(f"sheet.frames: must be a count >= 1 or a list of frame indices, got {frames}")
        return sheet_positions(len(m.frame_indices), frames)
    where = {f: p for p, f in enumerate(m.frame_indices)}
    missing = [int(f) for f in frames if int(f) not in where]
    if missing or not frames:
        raise ValueError(f"video {m.video_id}: sheet.frames {missing or list(frames)} have no masklets (masklet "
                         f"frames {m.frame_indices[0]}..{m.frame_indices[-1]}, {len(m.frame_indices)} in all)")
    return sorted({where[int(f)] for f in frames})


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (its bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, f: ImageFont.ImageFont) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=f)
    return x1 - x0, y1 - y0


def _wrap(draw: ImageDraw.ImageDraw, text: str, f: ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` pixels wide (a single long word stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and _text_size(draw, f"{lines[-1]} {word}", f)[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def thumbnail(frame: np.ndarray, width: int) -> np.ndarray:
    """The frame scaled to ``width`` pixels wide, aspect kept."""
    h, w = frame.shape[:2]
    height = max(1, round(h * width / w))
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


def _tagged_thumbnail(m: Masklets, pos: int, image: np.ndarray, width: int, size: int) -> Image.Image:
    """Thumbnail of an overlaid frame with each present object's id written at the top left of its mask."""
    thumb = Image.fromarray(thumbnail(image, width))
    draw = ImageDraw.Draw(thumb)
    f = font(size)
    scale = width / m.width
    for obj, rle in zip(m.obj_ids, m.rles[pos]):
        mask = decode_rle(rle)
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        label = str(obj)
        tw, th = _text_size(draw, label, f)
        x = min(max(0, int(cols[0] * scale)), max(0, thumb.width - tw - 4))
        y = min(max(0, int(rows[0] * scale)), max(0, thumb.height - th - 4))
        draw.rectangle((x, y, x + tw + 3, y + th + 3), fill=object_color(obj))
        draw.text((x + 2, y + 1), label, fill=(0, 0, 0), font=f)
    return thumb


def sheet_image(m: Masklets, tiles: list[tuple[int, Image.Image]], opts: SheetOptions) -> Image.Image:
    """The contact sheet: banner (random weights), title, colour key, then the (frame index, tile) grid."""
    gap, columns = opts.gap, max(1, min(opts.columns, len(tiles)))
    tw, th = tiles[0][1].size
    size = max(8, min(14, tw // 12))
    f, big = font(size), font(size + 2)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = _text_size(probe, "Ag0", f)[1] + 4
    width = columns * tw + (columns + 1) * gap
    header: list[tuple[str, str]] = []
    if random_weights(m):
        header += [("banner", t) for t in _wrap(probe, RANDOM_WARNING, big, width - 2 * gap)]
    if opts.title:
        model = m.provenance.get("model", "")
        ckpt = str(m.provenance.get("checkpoint", "")).rsplit("/", 1)[-1]
        title = " | ".join(p for p in (m.video_id, model, ckpt and f"checkpoint {ckpt}",
                                       describe_frames(m.frame_indices, m.frame_count), f"{len(m.obj_ids)} objects")
                         if p)
        header += [("title", t) for t in _wrap(probe, title, f, width - 2 * gap)]
    key_items = [(o, f"id {o}") for o in m.obj_ids]
    key_rows: list[list[tuple[int, str]]] = [[]]
    x = gap
    for obj, label in key_items:
        item_w = line + 4 + _text_size(probe, label, f)[0] + 2 * gap
        if key_rows[-1] and x + item_w > width:
            key_rows.append([])
            x = gap
        key_rows[-1].append((obj, label))
        x += item_w
    head_h = sum(line + 6 if kind == "banner" else line + 2 for kind, _ in header) + len(key_rows) * (line + 2)
    rows = -(-len(tiles) // columns)
    tile_h = th + line + 2
    sheet = Image.new("RGB", (width, gap + head_h + rows * (tile_h + gap)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = gap // 2
    for kind, text in header:
        if kind == "banner":
            draw.rectangle((0, y, width, y + line + 6), fill=BANNER)
            draw.text((gap, y + 2), text, fill=(255, 255, 255), font=big)
            y += line + 6
        else:
            draw.text((gap, y), text, fill=TEXT, font=f)
            y += line + 2
    for row in key_rows:
        x = gap
        for obj, label in row:
            draw.rectangle((x, y + 2, x + line - 4, y + line - 2), fill=object_color(obj))
            draw.text((x + line, y), label, fill=TEXT, font=f)
            x += line + 4 + _text_size(probe, label, f)[0] + 2 * gap
        y += line + 2
    top = y + gap // 2
    for k, (frame_idx, tile) in enumerate(tiles):
        r, c = divmod(k, columns)
        x0, y0 = gap + c * (tw + gap), top + r * (tile_h + gap)
        sheet.paste(tile, (x0, y0))
        draw.text((x0, y0 + th + 1), f"frame {frame_idx}", fill=TEXT, font=f)
    return sheet


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """PNG file bytes of an RGB image."""
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


class SheetBuilder:
    """Collects the sheet's tiles from overlaid frames as they stream by (``add`` every frame, in order)."""

    def __init__(self, m: Masklets, opts: SheetOptions) -> None:
        self.m, self.opts = m, opts
        self.positions = pick_positions(m, opts.frames)
        self._wanted = set(self.positions)
        self._tiles: list[tuple[int, Image.Image]] = []
        self._size = max(8, min(14, opts.width // 12))

    def add(self, pos: int, image: np.ndarray) -> None:
        """Offer the overlaid frame at position ``pos``; kept as a tile when the sheet shows it."""
        if pos in self._wanted:
            self._tiles.append((self.m.frame_indices[pos],
                                _tagged_thumbnail(self.m, pos, image, self.opts.width, self._size)))

    def png(self) -> bytes:
        """The sheet's PNG bytes."""
        if len(self._tiles) != len(self.positions):
            raise ValueError(f"video {self.m.video_id}: {len(self._tiles)} of the sheet's {len(self.positions)} "
                             f"frames were decoded")
        return png_bytes(sheet_image(self.m, self._tiles, self.opts))


def render_sheet(m: Masklets, frames: Iterable[np.ndarray], opts: SheetOptions) -> bytes:
    """Contact-sheet PNG bytes; ``frames`` yields the video frames of ``[m.frame_indices[p] for p in
    pick_positions(m, opts.frames)]`` in order (only those are decoded)."""
    builder = SheetBuilder(m, opts)
    colors = [object_color(o) for o in m.obj_ids]
    for pos, frame in zip(builder.positions, frames):
        builder.add(pos, overlay(_check_frame(m, pos, frame), (decode_rle(r) for r in m.rles[pos]), colors,
                                 opts.alpha))
    return builder.png()


def with_banner(image: np.ndarray) -> np.ndarray:
    """The frame with a red strip over its top rows saying the weights were random (as much of the sentence as
    fits its width; same size as the frame)."""
    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    f = font(max(8, min(14, img.height // 10)))
    texts = ("RANDOM WEIGHTS: these masks are meaningless", "RANDOM WEIGHTS: masks meaningless", "RANDOM WEIGHTS",
             "RANDOM")
    text = next((t for t in texts if _text_size(draw, t, f)[0] + 6 <= img.width), texts[-1])
    strip = _text_size(draw, "Ag", f)[1] + 6
    draw.rectangle((0, 0, img.width, strip), fill=BANNER)
    draw.text((3, 2), text, fill=(255, 255, 255), font=f)
    return np.asarray(img)


def with_frame_number(image: np.ndarray, frame_idx: int) -> np.ndarray:
    """The frame with its original frame number written in a dark box at the bottom left (same size)."""
    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    f = font(max(8, min(14, img.height // 10)))
    text = str(frame_idx)
    tw, th = _text_size(draw, text, f)[0], _text_size(draw, "Ag0", f)[1]
    top = img.height - th - 6
    draw.rectangle((0, top, tw + 6, img.height), fill=BACKGROUND)
    draw.text((3, top + 2), text, fill=TEXT, font=f)
    return np.asarray(img)


def render_video(m: Masklets, frames: Iterable[np.ndarray], fps: float, alpha: float = 0.5,
                 sheet_frames: int | list[int] = 8, sheet_columns: int = 4, thumb_width: int = 320,
                 gap: int = 6) -> tuple[bytes, bytes]:
    """(mp4 bytes, contact-sheet PNG bytes) of the masklets over ``frames`` (the frames of ``m.frame_indices``),
    each mp4 frame numbered; with random weights every mp4 frame carries a red banner saying so."""
    builder = SheetBuilder(m, SheetOptions(sheet_frames, sheet_columns, thumb_width, gap, alpha))
    encoder = Mp4Encoder(fps)
    count = 0
    random = random_weights(m)
    for pos, image in enumerate(overlaid_frames(m, frames, alpha)):
        numbered = with_frame_number(image, m.frame_indices[pos])
        encoder.add(with_banner(numbered) if random else numbered)
        builder.add(pos, image)
        count += 1
    if count != len(m.frame_indices) or count == 0:
        raise ValueError(f"video {m.video_id}: the video gave {count} frames for {len(m.frame_indices)} masklet "
                         f"frames")
    return encoder.finish(), builder.png()
