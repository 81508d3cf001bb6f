"""Set up the project and run it: ``python3 scripts/quickstart.py demo`` or ``python3 scripts/quickstart.py test``.

Needs only Python >= 3.10 (standard library). Both commands create ``.venv`` in the repository, install torch (the
CPU build on a machine without an NVIDIA GPU, the CUDA build where ``nvidia-smi`` works, with torchcodec) and the
project, then:

* ``demo [override ...]``: runs the main job (``jobs.propagate``) on the bundled sample and writes its HTML report.
  It uses the official ``sam2.1_hiera_tiny`` checkpoint when that can be fetched (or is cached, or given with
  ``model.checkpoint=...``) and seeded random weights otherwise, and says which in its first line. The prefix it
  wrote (``outputs/sample/sam2.1_hiera_tiny``, or ``..._random`` with random weights) is linked as
  ``outputs/sample/demo``, the name the README's follow-up examples use.
* ``test [pytest argument ...]``: also installs the test extras and the official ``sam2==1.1.0`` package (the
  parity oracle), then runs ``python -m pytest`` with the arguments given.

Each install step leaves a stamp in ``.venv/.quickstart/`` keyed on what it installed (the torch requirement, the
hash of pyproject.toml, the oracle version), so a second run skips straight to the command. Environment:

* ``TORCH_SPEC``: pip arguments for torch instead of the automatic choice, e.g.
  ``TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"``.
* ``SKIP_TORCH=1``: install no torch; ``.venv`` is created with ``--system-site-packages`` so the torch of the
  Python running this script is used.
* ``VENV``: the environment's folder (default ``.venv`` in the repository).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_VERSION = "2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
ORACLE = "sam2==1.1.0"
ORACLE_DEPS = ["iopath", "pillow", "tqdm"]
TINY_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
CACHE_DIR = Path("~/.cache/sam2_propagate/checkpoints").expanduser()   # pipeline/specs.py: ModelSpec.cache_dir
PROBE_TIMEOUT_S = 10.0
DEMO_LINK = Path("outputs/sample/demo")   # the README's follow-up examples read the demo's prefix through this name


def say(line: str) -> None:
    """One progress line of the set-up, flushed at once."""
    print(f"[quickstart] {line}", flush=True)


def venv_dir() -> Path:
    """The virtual environment's folder."""
    return Path(os.environ.get("VENV") or REPO / ".venv").resolve()


def venv_python() -> Path:
    """The environment's interpreter."""
    sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
    return venv_dir() / sub


def run(*args: str | os.PathLike, env: dict[str, str] | None = None) -> None:
    """Run a command; a failure ends the set-up with its exit status and the command line."""
    proc = subprocess.run([str(a) for a in args], cwd=REPO, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        say(f"failed ({proc.returncode}): {' '.join(str(a) for a in args)}")
        sys.exit(proc.returncode)


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    """pip inside the environment, quiet."""
    run(venv_python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args, env=env)


def stamp_path(step: str) -> Path:
    """Where the stamp of an install step lives."""
    return venv_dir() / ".quickstart" / f"{step}.stamp"


def done(step: str, key: str) -> bool:
    """Whether ``step`` was already installed with this ``key``."""
    path = stamp_path(step)
    return path.is_file() and path.read_text() == key


def mark(step: str, key: str) -> None:
    """Record that ``step`` is installed with ``key``."""
    path = stamp_path(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key)


def has_nvidia_gpu() -> bool:
    """Whether ``nvidia-smi`` runs and lists a GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def ensure_venv() -> None:
    """Create the environment once (with the base Python's packages visible when SKIP_TORCH=1)."""
    if venv_python().is_file():
        return
    say(f"creating {venv_dir()}")
    args = [sys.executable, "-m", "venv", str(venv_dir())]
    if os.environ.get("SKIP_TORCH") == "1":
        args.insert(3, "--system-site-packages")
    if subprocess.run(args, cwd=REPO).returncode != 0:
        say("cannot create a virtual environment; on Debian/Ubuntu install python3-venv first")
        sys.exit(1)
    pip("setuptools", "wheel")   # sam2's --no-build-isolation build needs them (3.12 venvs lack setuptools)


def torch_installed() -> bool:
    """Whether torch imports in the environment."""
    return subprocess.run([venv_python(), "-c", "import torch"], capture_output=True).returncode == 0


def ensure_torch() -> None:
    """Install torch: TORCH_SPEC if given, none with SKIP_TORCH=1, else the CUDA or CPU build of TORCH_VERSION."""
    if os.environ.get("SKIP_TORCH") == "1":
        if not torch_installed():
            say("SKIP_TORCH=1 but torch does not import in the environment; install it or unset SKIP_TORCH")
            sys.exit(1)
        return
    spec = os.environ.get("TORCH_SPEC")
    gpu = spec is None and has_nvidia_gpu()
    key = spec or f"torch=={TORCH_VERSION} {'cuda' if gpu else 'cpu'}"
    if done("torch", key) and torch_installed():
        return
    if spec:
        say(f"installing torch from TORCH_SPEC: {spec}")
        pip(*spec.split())
    elif gpu or platform.system() != "Linux":
        say(f"installing torch=={TORCH_VERSION} ({'CUDA build: nvidia-smi found a GPU' if gpu else 'PyPI build'})")
        pip(f"torch=={TORCH_VERSION}")
    else:
        say(f"installing torch=={TORCH_VERSION} (CPU build: no NVIDIA GPU found)")
        # a wheel under the configured find-links/indexes first, then the PyTorch CPU index (PyPI's is CUDA, GBs)
        probe = subprocess.run([venv_python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                f"torch=={TORCH_VERSION}+cpu"], cwd=REPO, capture_output=True, text=True)
        if probe.returncode != 0:
            pip(f"torch=={TORCH_VERSION}", "--index-url", TORCH_CPU_INDEX)
    mark("torch", key)


def ensure_project(test: bool) -> None:
    """Install the project editable (with the test extras for ``test``), keyed on pyproject.toml's hash."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if done("project", f"{digest} test") or (not test and done("project", f"{digest} run")):
        return
    say(f"installing the project{' with its test extras' if test else ''}")
    pip("-e", ".[test]" if test else ".")
    mark("project", f"{digest} {'test' if test else 'run'}")


def ensure_torchcodec() -> None:
    """With the CUDA build of torch (a GPU found), also torchcodec from PyPI, the build that matches it: the optional
    ``data.decoder=torchcodec`` (it loads where the system has FFmpeg's shared libraries). PyPI's torchcodec needs
    CUDA torch, so none on a CPU build (README: Decoders)."""
    if os.environ.get("TORCH_SPEC") or os.environ.get("SKIP_TORCH") == "1" or not has_nvidia_gpu():
        return
    key = f"torchcodec for torch=={TORCH_VERSION} cuda"
    if done("torchcodec", key):
        return
    say("installing torchcodec (optional decoder; needs FFmpeg's shared libraries, e.g. apt-get install ffmpeg)")
    pip("torchcodec==0.17.*")  # the release that pairs with TORCH_VERSION
    mark("torchcodec", key)


def ensure_oracle() -> None:
    """Install the official package as the tests' oracle: no deps (they would pull CUDA torch), no CUDA build."""
    key = f"{ORACLE} {' '.join(ORACLE_DEPS)}"
    if done("oracle", key):
        return
    say(f"installing the test oracle {ORACLE}")
    pip(*ORACLE_DEPS)   # first: pip then has no conflict to warn about for the dependencies sam2 is denied
    pip("--no-deps", "--no-build-isolation", ORACLE, env={"SAM2_BUILD_CUDA": "0"})
    mark("oracle", key)


def setup(test: bool) -> None:
    """Everything the command needs, each step skipped when its stamp says it is there."""
    if sys.version_info < (3, 10):
        say(f"Python >= 3.10 needed, this is {platform.python_version()}")
        sys.exit(1)
    ensure_venv()
    ensure_torch()
    ensure_project(test)
    ensure_torchcodec()
    if test:
        ensure_oracle()


def cached_checkpoint(url: str) -> Path:
    """Where jobs.propagate keeps its download of ``url`` (sam2core.checkpoint.fetch's cache layout)."""
    return CACHE_DIR / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]


def reachable(url: str) -> str | None:
    """None when ``url`` answers a HEAD request within the probe timeout, else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S) as r:
            return None if r.status < 400 else f"HTTP {r.status}"
    except Exception as err:  # noqa: BLE001 - any failure means: use random weights
        return f"{type(err).__name__}: {err}"


def weights_overrides(overrides: list[str]) -> tuple[list[str], bool]:
    """The checkpoint decision of the demo, told in one line: given, official (cached or reachable), or random.
    Returns the overrides it adds and whether the weights are random."""
    given = [o for o in overrides if o.startswith("model.checkpoint=")]
    if given:
        value = given[-1].split("=", 1)[1]
        say(f"weights: {'RANDOM (as asked): the masks are meaningless' if value == 'random' else value}")
        return [], value == "random"
    if cached_checkpoint(TINY_URL).is_file():
        say(f"weights: official sam2.1_hiera_tiny (cached in {CACHE_DIR})")
        return [], False
    why = reachable(TINY_URL)
    if why is None:
        say(f"weights: official sam2.1_hiera_tiny (downloading once from {TINY_URL})")
        return [], False
    say(f"weights: RANDOM, the masks are meaningless: the official checkpoint cannot be fetched ({why}); "
        f"pass model.checkpoint=/path/to/sam2.1_hiera_tiny.pt for real masks")
    return ["model.checkpoint=random", "model.image_size=256",
            "output.uri=outputs/sample/sam2.1_hiera_tiny_random"], True


def prefix_of(overrides: list[str]) -> str:
    """The output prefix the job will write (the last output.uri override, else the config's default)."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("output.uri=")]
    return given[-1] if given else "outputs/sample/sam2.1_hiera_tiny"


def link_demo_prefix(prefix: str, repo: Path = REPO) -> Path | None:
    """Point ``DEMO_LINK`` at the local prefix the demo wrote (replacing an older link, atomically), so that the
    README's follow-up commands run verbatim whichever weights the demo had. None, and said, where it cannot: a
    remote prefix, or a real folder already at that name (left alone)."""
    link = repo / DEMO_LINK
    if "://" in prefix:
        say(f"{DEMO_LINK} not linked: the prefix {prefix} is not a local folder")
        return None
    if link.exists() and not link.is_symlink():
        say(f"{DEMO_LINK} not linked: a folder of that name is already there")
        return None
    target = os.path.relpath((repo / prefix).resolve(), link.parent.resolve())
    temporary = link.with_name(f".{link.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target, target_is_directory=True)
    os.replace(temporary, link)
    return link


def venv_env() -> dict[str, str]:
    """The environment with the virtual environment activated (its bin first on PATH, VIRTUAL_ENV set), so that
    whatever the command starts as ``python`` is the environment's."""
    bindir = venv_python().parent
    return {**os.environ, "VIRTUAL_ENV": str(venv_dir()), "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}


def demo(overrides: list[str]) -> int:
    """Run the main job on the bundled sample, then write its report."""
    extra, random = weights_overrides(overrides)
    setup(test=False)
    args = [*extra, *overrides]
    proc = subprocess.run([venv_python(), "-m", "jobs.propagate", *args], cwd=REPO, env=venv_env())
    prefix = Path(prefix_of(args))
    if proc.returncode in (0, 1):
        if link_demo_prefix(str(prefix)) is not None:
            say(f"{DEMO_LINK} -> {prefix} (the README's follow-up examples use {DEMO_LINK})")
        report = subprocess.run([venv_python(), "-m", "jobs.report", f"prefix={prefix}"], cwd=REPO, env=venv_env())
        if report.returncode == 0:
            say(f"report: {(REPO / prefix / 'report' / 'index.html').resolve()} (open it in a browser)")
    if random:
        say("the weights were RANDOM: the masks are meaningless (the summary, the report and the pictures say so)")
    return proc.returncode


def test(args: list[str]) -> int:
    """Run the test suite in the environment."""
    setup(test=True)
    return subprocess.run([venv_python(), "-m", "pytest", *args], cwd=REPO, env=venv_env()).returncode


def main(argv: list[str]) -> int:
    """``demo [override ...]`` or ``test [pytest argument ...]``."""
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    return demo(argv[1:]) if argv[0] == "demo" else test(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
