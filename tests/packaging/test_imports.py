"""The installed distribution imports nothing it does not declare: every module of sam2core, pipeline and jobs
imports in a fresh interpreter where only the standard library, the declared dependencies (and theirs) and the
project itself can be imported; the official ``sam2`` oracle, test and benchmark helpers are refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.pipeline.driver.propagate_support import REPO

_CHECK = textwrap.dedent('''
    import importlib, importlib.abc, importlib.machinery, importlib.metadata as md, pathlib, pkgutil, re, sys

    from packaging.requirements import Requirement

    def closure(dist):
        """Distributions ``dist`` needs, following the extras each requirement asks for."""
        seen, todo = set(), [(dist, frozenset())]
        while todo:
            name, extras = todo.pop()
            key = (re.sub(r"[-_.]+", "-", name).lower(), extras)
            if key in seen:
                continue
            seen.add(key)
            try:
                reqs = md.requires(name) or []
            except md.PackageNotFoundError:
                continue
            for text in reqs:
                req = Requirement(text)
                if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                    todo.append((req.name, frozenset(req.extras)))
        return {name for name, _ in seen}

    declared = closure("sam2-propagate")
    allowed = {"sam2core", "pipeline", "jobs"} | set(sys.stdlib_module_names)
    for module, dists in md.packages_distributions().items():
        if any(re.sub(r"[-_.]+", "-", d).lower() in declared for d in dists):
            allowed.add(module)
    allowed |= {m for m in sys.modules}  # already imported by the interpreter itself

    def vendored(top):
        """Whether ``top`` would load from inside an allowed package (as ray ships psutil in its own folder)."""
        spec = importlib.machinery.PathFinder.find_spec(top, sys.path)
        parts = pathlib.Path(spec.origin).parts if spec and spec.origin else ()
        return any(a == "site-packages" and b in allowed for a, b in zip(parts, parts[1:]))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top not in allowed and not top.startswith("_") and not vendored(top):
                raise ModuleNotFoundError(f"{name} is not a declared dependency")
            return None

    sys.meta_path.insert(0, Refuse())
    failures = []
    for package in ("sam2core", "pipeline", "jobs"):
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, package + "."):
            try:
                importlib.import_module(info.name)
            except ImportError as e:
                failures.append(f"{info.name}: {e}")
    print("IMPORTED", len(sys.modules))
    assert not failures, "\\n".join(failures)
    assert "sam2" not in sys.modules
''')


def test_every_installed_module_imports_with_declared_dependencies_only():
    result = subprocess.run([sys.executable, "-c", _CHECK], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_refuses_an_undeclared_import():
    probe = _CHECK.replace('for package in ("sam2core", "pipeline", "jobs"):',
                           'importlib.import_module("sam2")\nfor package in ():')
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "sam2 is not a declared dependency" in result.stderr
