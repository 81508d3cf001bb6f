"""The performance report: the engine, one worker, its mask output path, the driver, session memory and the scheduling
policy simulated at SA-V scale: ``python -m benchmarks key=value``.

Sections are chosen with
``sections=[engine,worker,output,automatic,driver,memory,images,scheduling,decoding,frame_step]`` (``gpu``: the GPU
acceptance section, also ``preset=gpu``); each figure is printed with its target (met / MISSED)
and the whole table is written as JSON to ``report``. Config: benchmarks/conf/benchmark.yaml.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from benchmarks.report import Figure, figure, format_table, write_json

log = logging.getLogger("benchmark")


def _sections(c: dict[str, Any]) -> dict[str, Callable[[], list[Figure]]]:
    """Each section as a call with its plain config values (its module imported when it runs, so one that cannot
    import fails alone)."""
    common = {"seed": c["seed"], "threads": c["threads"]}

    def section(name: str) -> Any:
        return importlib.import_module(f"benchmarks.{name}")

    return {
        "engine": lambda: section("engine").run_section(c["engine"], **common),
        "worker": lambda: section("worker").run_section(c["worker"], c["arch"], keep_target=c["worker"]["target"],
                                                        **common),
        "output": lambda: section("output").run_section(c["output"], target=c["output"]["target"], **common),
        "automatic": lambda: section("automatic").run_section(c["automatic"], **common),
        "driver": lambda: section("driver").run_section(c["driver"], targets=c["driver"]["targets"], **common),
        "memory": lambda: section("memory").run_section(c["memory"], c["arch"], growth_target=c["memory"]["target"],
                                                        **common),
        "scheduling": lambda: section("scheduling").run_section(c["scheduling"], target=c["scheduling"]["target"],
                                                                **common),
        "images": lambda: section("images").run_section(c["images"], **common),
        "frame_step": lambda: section("frame_step").run_section(c["frame_step"], **common),
        "decoding": lambda: section("decoding").run_section(c["decoding"], **common),
        "gpu": lambda: section("gpu").run_section(c["gpu"], stage=c.get("stage"), **common),
    }


def _context(c: dict[str, Any]) -> dict[str, Any]:
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host_cpus": os.cpu_count(),
            "platform": platform.platform(), "torch": torch.__version__, "threads": c["threads"],
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "config": c}


@hydra.main(config_path="conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the chosen sections, print the table, write the JSON; exit 1 if a section failed."""
    c = OmegaConf.to_container(cfg, resolve=True)
    # inherited by every measuring process and Ray worker (read there at import time)
    os.environ.update(OMP_NUM_THREADS=str(c["threads"]), TQDM_DISABLE="1")
    sections = _sections(c)
    unknown = [s for s in c["sections"] if s not in sections]
    if unknown:
        sys.exit(f"unknown benchmark section(s) {unknown}; choose from {sorted(sections)}")
    figures: list[Figure] = []
    failed = []
    for name in c["sections"]:
        log.info("section %s ...", name)
        start = time.perf_counter()
        try:
            figures += sections[name]()
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            figures.append(figure(name, "section failed", None, "", note=f"{type(exc).__name__}: {exc}"))
        log.info("section %s took %.0f s", name, time.perf_counter() - start)
    print(format_table(figures), flush=True)
    write_json(Path(c["report"]), figures, _context(c))
    print(f"written: {c['report']}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
