"""``python -m jobs.benchmark``: every section runs end to end at the tiniest settings (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.bench.report import figure, format_table

TINY = {
    "engine": ["engine.cpu.image_sizes=[128]", "engine.cpu.objects=[1,2]", "engine.cpu.frames=3"],
    "worker": ["worker.image_size=128", "worker.objects=2", "worker.frames=4", "worker.height=64",
               "worker.width=96", "worker.warmup=0", "worker.runs=1"],
    "driver": ["driver.videos=200", "driver.rows=2500", "driver.dispatch_tasks=50"],
    "memory": ["memory.frames=[3,6]", "memory.objects=1", "memory.height=64", "memory.width=96"],
}


@pytest.mark.parametrize("section", sorted(TINY))
def test_section_runs_and_reports(section: str, run_job, tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    proc = run_job("benchmark", f"sections=[{section}]", f"report={report}", *TINY[section])
    figures = json.loads(report.read_text())["figures"]
    assert figures and all(f["section"] == section for f in figures)
    assert not [f for f in figures if f["name"] == "section failed"]
    assert all(f["value"] is not None for f in figures if f["target"]), figures
    assert "status" in proc.stdout and str(report) in proc.stdout
    if section == "engine":
        assert any(f["name"].startswith("ours/official, 1 obj") and f["target"] == ">= 1.0" for f in figures)


def test_unknown_section_is_refused(run_job, tmp_path: Path) -> None:
    proc = run_job("benchmark", "sections=[engin]", f"report={tmp_path / 'b.json'}", check=False)
    assert proc.returncode != 0
    assert "unknown benchmark section" in proc.stderr and "engin" in proc.stderr


def test_targets_are_checked_and_tabulated() -> None:
    rows = [figure("s", "fast", 2.0, "x", ">= 1.5"), figure("s", "slow", 1.0, "x", ">= 1.5"),
            figure("s", "info", 3.0, "MiB")]
    assert [f.met for f in rows] == [True, False, None]
    table = format_table(rows)
    assert "met" in table and "MISSED" in table
