"""Benchmark figures: one ``Figure`` per number, checked against its target, printed as a table and kept as JSON."""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}


@dataclass
class Figure:
    """One measured number; ``target`` like ``">= 1.5"`` (empty: informational), ``met`` None when unchecked."""

    section: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""


def figure(section: str, name: str, value: float | None, unit: str, target: str = "", note: str = "") -> Figure:
    """A figure, with ``met`` decided when it has a target and a value."""
    met = None
    if target and value is not None:
        op, threshold = target.split()
        met = bool(_OPS[op](value, float(threshold)))
    return Figure(section, name, value, unit, target, met, note)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e5:
        return f"{value:.3e}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:#.3g}"


def format_table(figures: list[Figure]) -> str:
    """Fixed-width table: section, figure, value, unit, target, met/missed, note."""
    header = ("section", "figure", "value", "unit", "target", "status", "note")
    rows = [header] + [(f.section, f.name, _fmt(f.value), f.unit, f.target,
                        "" if f.met is None else ("met" if f.met else "MISSED"), f.note) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + ("  " + r[-1] if r[-1] else "") for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def write_json(path: Path, figures: list[Figure], context: dict[str, Any]) -> None:
    """``{"context": ..., "figures": [...]}`` at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"context": context, "figures": [asdict(f) for f in figures]}, indent=2) + "\n")
