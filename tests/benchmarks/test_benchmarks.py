"""``python -m benchmarks`` (every section end to end) and ``python -m benchmarks.engine``, at the tiniest settings
(no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import figure, format_table

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "engine": ["engine.cpu.image_sizes=[128]", "engine.cpu.objects=[1,2]", "engine.cpu.frames=3"],
    "worker": ["worker.cases=[{image_size: 128, objects: 2, frames: 4, height: 64, width: 96}]", "worker.warmup=0",
               "worker.runs=1"],
    "automatic": ["automatic.cases=[{image_size: 64, height: 48, width: 64, points_per_side: 4}]",
                  "automatic.video_cases=[{image_size: 64, frames: 6, every: 3, points_per_side: 4, max_objects: 2}]",
                  "automatic.matching={height: 90, width: 160, known: [3], new: 2, runs: 1}"],
    "output": ["output.objects=3", "output.image_size=128", "output.height=90", "output.width=160", "output.frames=3",
               "output.warmup=0", "output.runs=1"],
    "driver": ["driver.videos=200", "driver.rows=2500", "driver.dispatch_tasks=50"],
    "memory": ["memory.frames=[3,6]", "memory.objects=1", "memory.height=64", "memory.width=96"],
    "scheduling": ["scheduling.workers=[4,8]", "scheduling.workload.videos=300", "scheduling.workload.masklets=3000"],
    "images": ["images.cpu.image_size=128", "images.cpu.images=3", "images.cpu.height=60", "images.cpu.width=80",
               "images.cpu.batch=2", "images.cpu.warmup=0", "images.cpu.runs=1"],
    "decoding": ["decoding.frames=8", "decoding.height=64", "decoding.width=96", "decoding.gop=4", "decoding.runs=1"],
    "frame_step": ["frame_step.frames=8", "frame_step.objects=2", "frame_step.height=64", "frame_step.width=96",
                   "frame_step.image_size=128"],
}


def _run(module: str, *args: str, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> args…`` from the repository root, in a subprocess (Hydra stays out of pytest)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)  # a net against a hang only: the engine section took 122 s on a loaded machine
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _report(*overrides: str, tmp_path: Path, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The report, with Hydra's run folder under the test's tmp_path, not the repository."""
    return _run("benchmarks", *overrides, f"hydra.run.dir={tmp_path / 'hydra'}", check=check, env=env)


# what the GPU acceptance run must do without: neither the device machine's image nor the wheels of
# scripts/device_bundle.py hold them (a Ray wheel alone is over what a device call may carry)
NOT_ON_THE_DEVICE = ("ray", "av", "decord", "s3fs", "torchcodec")


def _without(packages: tuple[str, ...], folder: Path) -> dict[str, str]:
    """Environment under which Python processes (and the processes they start) fail to import ``packages``, as on a
    machine where they are not installed: a ``sitecustomize`` in ``folder`` puts a refusing finder first."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\n\n\n"
        "class _Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {set(packages)!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (not on the device machine)', name=name)\n"
        "        return None\n\n\n"
        "sys.meta_path.insert(0, _Absent())\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


HEAVY = {"engine", "worker"}  # ~25 s each; the gpu preset's smoke test and the frame_step section run the same paths


@pytest.mark.slow
@pytest.mark.parametrize("section", sorted(HEAVY))
def test_heavy_section_runs_and_reports(section: str, tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    proc = _report(f"sections=[{section}]", f"report={report}", *TINY[section], tmp_path=tmp_path)
    _check_section(section, json.loads(report.read_text())["figures"])
    assert "status" in proc.stdout and str(report) in proc.stdout


def test_every_other_section_runs_and_reports(tmp_path: Path) -> None:
    """The light sections in one run of the report (one start-up of the benchmark process for all of them)."""
    light = sorted(set(TINY) - HEAVY)
    report = tmp_path / "bench.json"
    proc = _report(f"sections=[{','.join(light)}]", f"report={report}",
                   *(o for section in light for o in TINY[section]), tmp_path=tmp_path)
    figures = json.loads(report.read_text())["figures"]
    for section in light:
        _check_section(section, [f for f in figures if f["section"] == section])
    assert {f["section"] for f in figures} == set(light)
    assert "status" in proc.stdout and str(report) in proc.stdout


def _check_section(section: str, figures: list[dict]) -> None:
    assert figures, section
    assert not [f for f in figures if f["name"] == "section failed"], figures
    assert all(f["value"] is not None for f in figures if f["target"]), figures
    if section == "engine":
        assert any(f["name"].startswith("ours/official, 1 obj") and f["target"] == ">= 1.0" for f in figures)
        names = [f["name"] for f in figures]
        for variant in ("official", "official_2t", "ours_serial", "ours"):
            assert any(name.startswith(f"{variant} fps, 2 obj") for name in names), names
        assert any(name.startswith("ours/official_2t, 1 obj") for name in names), names
        diffs = [f for f in figures if "|dlogit|" in f["name"]]
        assert diffs and all(f["value"] is not None and f["value"] < 1e-3 for f in diffs), diffs
    if section == "images":  # the same masks as the official loop (random weights, fp32)
        assert all("min IoU 1.0000" in f["note"] for f in figures if f["name"].startswith("images: ours")), figures
    if section == "output":
        assert all(f["note"] == "identical bytes" for f in figures if f["name"].startswith("output stage")), figures


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    proc = _report("sections=[engin]", f"report={tmp_path / 'b.json'}", tmp_path=tmp_path, check=False)
    assert proc.returncode != 0
    assert "unknown benchmark section" in proc.stderr and "engin" in proc.stderr


@pytest.mark.slow  # the engine section test runs the same engine measurement
def test_engine_command_prints_its_table() -> None:
    """One row per thread count (1 and 2 by default)."""
    proc = _run("benchmarks.engine", "--sizes", "128", "--objects", "1", "--frames", "3", "--variants",
                "official", "ours")
    header = next(line for line in proc.stdout.splitlines() if line.lstrip().startswith("model"))
    for column in ("thr", "official s/f", "ours s/f", "ours/official", "official init s", "ours init s",
                   "ours |dlogit|"):
        assert column in header, header
    rows = [line.split() for line in proc.stdout.splitlines() if line.lstrip().startswith("sam2.1_hiera_tiny")]
    assert [r[:5] for r in rows] == [["sam2.1_hiera_tiny", "128", str(t), "1", "float32"] for t in (1, 2)], \
        proc.stdout


def test_gpu_preset_runs_as_a_cpu_smoke_test(tmp_path: Path) -> None:
    """``preset=gpu`` without a GPU: the staged acceptance script at tiny sizes, every kind of figure present, each
    stage's rows printed as soon as it is done; ``stage=N`` reruns one stage alone. It runs without the packages a
    device machine lacks (``NOT_ON_THE_DEVICE``), as ``scripts/gpu_acceptance.sh`` runs it there."""
    report = tmp_path / "gpu.json"
    state = [f"gpu.state={tmp_path / 'stages.json'}", f"gpu.inductor_cache={tmp_path / 'inductor'}"]
    bare = _without(NOT_ON_THE_DEVICE, tmp_path / "site")
    proc = _report("preset=gpu", f"report={report}", *state, tmp_path=tmp_path, env=bare)
    figures = json.loads(report.read_text())["figures"]
    names = [f["name"] for f in figures]
    assert figures and all(f["section"] == "gpu" for f in figures), names
    assert not [n for n in names if n == "section failed" or "skipped" in n], figures
    for prefix in ("steady state: SDPA backend, no mask", "steady state: graphs compiled during the pass",
                   "steady state: CUDA graphs recorded during the pass", "steady state: CUDA-graph skips",
                   "official object-frames/s, 1 obj", "ours object-frames/s, 2 obj", "ours/official, 2 obj",
                   "parity: ours min IoU vs official, 1 obj", "memory growth", "FLOPs per frame", "achieved FLOP/s",
                   "wall time: stage 1 (steady", "wall time: stage 2 (speed", "wall time: stage 3 (memory)",
                   "wall time: stage 4 (flops)", "images: ours / official", "wall time: stage 5 (images",
                   "wall time: the whole section"):
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    parity = [f for f in figures if f["name"].startswith("parity")]
    assert all(f["met"] for f in parity), parity
    assert all(f["met"] for f in figures if f["name"].startswith("steady state") and f["target"]), figures
    assert all(f["value"] > 0 for f in figures if f["name"].startswith(("FLOPs", "achieved"))), figures
    tables = proc.stdout.count("status")  # one table per stage as it ends, then the section's
    assert tables == 6, proc.stdout
    assert proc.stdout.index("wall time: stage 1") < proc.stdout.index("wall time: stage 2")

    again = tmp_path / "stage4.json"
    _report("preset=gpu", "stage=4", f"report={again}", *state, tmp_path=tmp_path)
    names = [f["name"] for f in json.loads(again.read_text())["figures"]]
    assert any(n.startswith("achieved FLOP/s") for n in names), names  # the speed of stage 2, read back
    assert not any(n.startswith(("steady state", "parity", "memory growth")) for n in names), names


def test_official_variant_is_timed_in_a_process_without_ours() -> None:
    """Each engine variant runs in a process of its own: the one that times the official predictor never imports
    our package (its ``sys.modules``), ours compares its masks with the official ones left by the baseline."""
    from benchmarks.engine import EngineRun, measure

    run = EngineRun("sam2.1_hiera_tiny", 64, (1,), 2, "cpu", "float32", ("official", "ours"), 0, 1, 0)
    rows = {r["variant"]: r for r in measure(run)}
    assert {v: r["ours_loaded"] for v, r in rows.items()} == {"official": False, "ours": True}
    assert rows["ours"]["max_abs_diff"] < 1e-3 and rows["ours"]["min_iou"] > 0.99


def test_flop_peaks_match_device_names_precisely() -> None:
    """PCIe and NVL parts are not given the SXM part's peak; unknown devices have none."""
    from benchmarks.gpu import device_peak_flops

    peaks = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
             "NVIDIA H200": 989e12, "NVIDIA H200 NVL": 835e12, "NVIDIA GH200 480GB": 989e12,
             "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12, "NVIDIA L40S": 362e12,
             "NVIDIA L4": 121e12, "NVIDIA A10G": 70e12, "NVIDIA GeForce RTX 4090": None, "NVIDIA H20": None}
    assert {name: device_peak_flops(name) for name in peaks} == peaks


def test_engine_command_refuses_unknown_variants() -> None:
    proc = _run("benchmarks.engine", "--variants", "ours", "official_fast", check=False)
    assert proc.returncode != 0 and "official_fast" in proc.stderr


def test_targets_are_checked_and_tabulated() -> None:
    rows = [figure("s", "fast", 2.0, "x", ">= 1.5"), figure("s", "slow", 1.0, "x", ">= 1.5"),
            figure("s", "info", 3.0, "MiB")]
    assert [f.met for f in rows] == [True, False, None]
    table = format_table(rows)
    assert "met" in table and "MISSED" in table
