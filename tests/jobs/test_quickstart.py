"""The set-up script's decisions, without installing anything: which weights the demo uses and says it uses, which
torch it picks, and the stamps that let a second run skip the installs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from tests.jobs.jobdata import REPO


@pytest.fixture
def quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/quickstart.py as a module, its environment folder and checkpoint cache under tmp_path."""
    spec = importlib.util.spec_from_file_location("quickstart_under_test", REPO / "scripts" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("VENV", str(tmp_path / "venv"))
    monkeypatch.setattr(module, "CACHE_DIR", tmp_path / "cache")
    return module


def test_demo_weights_decision(quickstart: ModuleType, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.setattr(quickstart, "reachable", lambda url: "URLError: no network")
    extra, random = quickstart.weights_overrides([])
    assert random and extra == ["model.checkpoint=random", "model.image_size=256",
                                "output.uri=outputs/sample/sam2.1_hiera_tiny_random"]
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "weights: RANDOM" in line and "URLError: no network" in line

    assert quickstart.weights_overrides(["model.checkpoint=/x/tiny.pt"]) == ([], False)
    assert "weights: /x/tiny.pt" in capsys.readouterr().out
    assert quickstart.weights_overrides(["model.checkpoint=random"]) == ([], True)

    cached = quickstart.cached_checkpoint(quickstart.TINY_URL)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert quickstart.weights_overrides([]) == ([], False)
    assert "official sam2.1_hiera_tiny (cached" in capsys.readouterr().out
    cached.unlink()
    monkeypatch.setattr(quickstart, "reachable", lambda url: None)
    assert quickstart.weights_overrides([]) == ([], False)
    assert "downloading once" in capsys.readouterr().out
    assert quickstart.prefix_of(["output.uri=a", "output.uri=b"]) == "b"
    assert quickstart.prefix_of([]) == "outputs/sample/sam2.1_hiera_tiny"


def test_cached_checkpoint_matches_the_jobs_cache() -> None:
    """The demo looks where sam2core.checkpoint.fetch puts the download (cache_dir/sha16(uri)/basename)."""
    spec = importlib.util.spec_from_file_location("qs_cache_check", REPO / "scripts" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.cached_checkpoint(module.TINY_URL)
    assert path.name == "sam2.1_hiera_tiny.pt" and len(path.parent.name) == 16
    assert (REPO / "conf" / "model" / "sam2.1_hiera_tiny.yaml").read_text().count(module.TINY_URL) == 1


def test_stamps_and_torch_choice(quickstart: ModuleType, monkeypatch) -> None:
    assert not quickstart.done("project", "abc")
    quickstart.mark("project", "abc")
    assert quickstart.done("project", "abc") and not quickstart.done("project", "abd")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(quickstart, "pip", lambda *args, env=None: calls.append(args))
    monkeypatch.setattr(quickstart, "torch_installed", lambda: True)
    monkeypatch.setattr(quickstart, "has_nvidia_gpu", lambda: True)
    monkeypatch.delenv("TORCH_SPEC", raising=False)
    monkeypatch.delenv("SKIP_TORCH", raising=False)
    quickstart.ensure_torch()
    assert calls == [("torch==2.13.0",)]                           # with a GPU: PyPI's (CUDA) build
    quickstart.ensure_torch()
    assert len(calls) == 1                                          # stamped: skipped
    monkeypatch.setenv("TORCH_SPEC", "torch==2.5.1 --index-url https://example.invalid/cu124")
    quickstart.ensure_torch()
    assert calls[-1] == ("torch==2.5.1", "--index-url", "https://example.invalid/cu124")
    monkeypatch.setenv("SKIP_TORCH", "1")
    quickstart.ensure_torch()
    assert len(calls) == 2                                          # SKIP_TORCH: never installs


def test_the_demo_links_its_prefix_for_the_readme_examples(quickstart: ModuleType, tmp_path: Path) -> None:
    """Whichever weights the demo had, ``outputs/sample/demo`` leads to the prefix it wrote (an older link is
    replaced), and the README's follow-up commands read the demo's output through that name only."""
    for name in ("sam2.1_hiera_tiny_random", "sam2.1_hiera_tiny"):
        prefix = tmp_path / "outputs" / "sample" / name
        (prefix / "masklets").mkdir(parents=True)
        (prefix / "masklets" / f"{name}.json").write_text("{}")
        link = quickstart.link_demo_prefix(f"outputs/sample/{name}", repo=tmp_path)
        assert link == tmp_path / "outputs" / "sample" / "demo" and link.is_symlink()
        assert (link / "masklets" / f"{name}.json").is_file()
    assert quickstart.link_demo_prefix("s3://bucket/run", repo=tmp_path) is None
    (tmp_path / "outputs" / "sample" / "demo").unlink()
    (tmp_path / "outputs" / "sample" / "demo").mkdir()
    assert quickstart.link_demo_prefix("outputs/sample/sam2.1_hiera_tiny", repo=tmp_path) is None

    readme = (REPO / "README.md").read_text()
    named = {m.rstrip("/") for m in re.findall(r"(?:prefix|pred)=(outputs/sample/[\w./-]*)", readme)}
    named |= set(re.findall(r'read_masklets\("(outputs/sample/[\w.-]*)', readme))
    assert named == {"outputs/sample/demo"}
