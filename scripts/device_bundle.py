"""Wheels for the GPU acceptance run on a bare device machine, where nothing can be fetched.

``python -m benchmarks preset=gpu`` needs a few packages that such a machine's image lacks (its ``python3`` holds
CUDA PyTorch, torchvision, numpy, Pillow, PyYAML, tqdm, fsspec, pyarrow and portalocker): Hydra and OmegaConf (the
benchmark's config), pycocotools (the image stage's COCO strings), iopath and the official ``sam2`` package (the
oracle the speed and image stages time and compare against). This script puts them in ``.wheels/`` (git-ignored),
at the versions of the environment that runs it (the one the test suite passed in), built for the device's Python:

    .venv/bin/python scripts/device_bundle.py                 # -> .wheels/, for Python 3.12 on x86-64 Linux
    .venv/bin/python scripts/device_bundle.py --python 3.11   # for another Python (e.g. to try it here)

On the device machine, with ``.wheels`` carried: ``bash scripts/gpu_acceptance.sh`` (installs them and runs the
staged script). Ray, PyAV and decord are not needed there: the stages render their frames on the device and time
the engine and the image loop without Ray.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from quickstart import ORACLE

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / ".wheels"
# what the staged script imports beyond the device image, as distribution names (their versions: this environment's)
PACKAGES = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "pycocotools", "iopath")
# manylinux tags pip must be told one by one (it matches each exactly); newest first
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
LIMIT_BYTES = 48 * 2**20  # a device call carries 64 MiB in all, the repository included


def _pip(*args: str, env: dict[str, str] | None = None) -> bool:
    """Run pip in this interpreter; whether it succeeded (its output is shown)."""
    return subprocess.run([sys.executable, "-m", "pip", *args], env=env).returncode == 0


def _fetch(requirement: str, python: str) -> None:
    """A binary wheel of ``requirement`` for ``python`` on x86-64 Linux, or, for a pure-Python sdist, one built
    here (it then fits any Python)."""
    version = python.replace(".", "")
    tags = [arg for p in PLATFORMS for arg in ("--platform", p)]
    if _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--abi", f"cp{version}", "--abi", "abi3", "--abi", "none", *tags, "-d", str(FOLDER), requirement):
        return
    print(f"no binary wheel of {requirement} for Python {python}: building one from its source", flush=True)
    if not _pip("wheel", "--no-deps", "-w", str(FOLDER), requirement):
        sys.exit(f"could not build a wheel of {requirement}")


def main() -> None:
    """Fill ``.wheels/`` and print what to run on the device machine."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="3.12", help="the device's Python version (default: 3.12)")
    args = parser.parse_args()
    shutil.rmtree(FOLDER, ignore_errors=True)
    FOLDER.mkdir()
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            sys.exit(f"{name} is not installed here: run this with the project's environment "
                     "(.venv/bin/python scripts/device_bundle.py, after python3 scripts/quickstart.py test)")
        _fetch(f"{name}=={version}", args.python)
    # the oracle without its CUDA extension (as the test suite installs it): pure Python, built against this torch
    if not _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(FOLDER), ORACLE,
                env={**os.environ, "SAM2_BUILD_CUDA": "0"}):
        sys.exit(f"could not build a wheel of {ORACLE} (it needs torch in this environment)")
    wheels = sorted(FOLDER.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"  {w.name}  {w.stat().st_size / 2**20:.2f} MiB")
    if total > LIMIT_BYTES:
        sys.exit(f".wheels/ holds {total / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB a device call "
                 "may carry beside the repository")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {FOLDER.relative_to(REPO)}/. On the device machine, "
          "carrying .wheels: bash scripts/gpu_acceptance.sh")


if __name__ == "__main__":
    main()
