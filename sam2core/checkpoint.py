"""Official-format checkpoint files: fetch (local path or any fsspec URI), identify, and load strictly."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

_SIZES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
_PATCH_KEY = "image_encoder.trunk.patch_embed.proj.weight"
_BLOCK_PREFIX = "image_encoder.trunk.blocks."


class CheckpointError(Exception):
    """A checkpoint that cannot be read, is not a SAM 2 state dict, or does not fit the model."""


class CheckpointMismatch(CheckpointError):
    """A readable SAM 2 checkpoint whose keys or shapes differ from the architecture's."""


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint came from and what it holds."""

    uri: str
    path: str  # local file that was read (the cache entry for remote URIs)
    sha256: str
    name: str  # e.g. "sam2.1_hiera_large"
    version: str  # "2.0" or "2.1"
    size: str  # tiny / small / base_plus / large


def inspect_checkpoint(
    uri_or_state_dict: str | os.PathLike | dict, storage_options: dict | None = None, cache_dir: str | None = None
) -> tuple[str, str, str]:
    """(model name, version, size) of a checkpoint file or state dict, e.g. ("sam2.1_hiera_tiny", "2.1", "tiny")."""
    if isinstance(uri_or_state_dict, dict):
        return _identify(_state_dict_of(uri_or_state_dict, "<state dict>"), "<state dict>")
    path = fetch(str(uri_or_state_dict), storage_options, cache_dir)
    return _identify(_read(path, str(uri_or_state_dict)), str(uri_or_state_dict))


def load_checkpoint(
    model: nn.Module, uri: str | os.PathLike, storage_options: dict | None = None, cache_dir: str | None = None
) -> CheckpointInfo:
    """Load an official checkpoint into ``model`` (strict) after checking it is the model's architecture."""
    uri = str(uri)
    path = fetch(uri, storage_options, cache_dir)
    state = _read(path, uri)
    name, version, size = _identify(state, uri)
    expected = model.config.name
    if name != expected:
        raise CheckpointError(f"{uri}: checkpoint is {name}, config asks for {expected}")
    check_fits(state, model, uri)
    model.load_state_dict(state, strict=True)
    return CheckpointInfo(uri=uri, path=path, sha256=checkpoint_sha256(path), name=name, version=version, size=size)


def read_state_dict(uri: str | os.PathLike, storage_options: dict | None = None,
                    cache_dir: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file or URI (fetched into the cache), on the CPU."""
    return _read(fetch(str(uri), storage_options, cache_dir), str(uri))


def check_fits(state: dict[str, torch.Tensor], model: nn.Module, uri: str, shown: int = 3) -> None:
    """Refuse a state dict whose keys or shapes differ from ``model``'s: CheckpointError naming ``uri`` and the
    first ``shown`` missing, unexpected and mis-shaped keys (``model`` may live on the meta device)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{len(keys)} {what}: {', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("keys of another shape", shapes)) if keys]
    if problems:
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise CheckpointMismatch(f"{uri}: does not fit {name}: {'; '.join(problems)}")


def fetch(uri: str, storage_options: dict | None = None, cache_dir: str | None = None) -> str:
    """Local path of ``uri``: local files as they are; remote ones copied once into ``cache_dir``.

    A cached copy is reused while its size matches the remote object; downloads land under a temporary name
    first so an interrupted fetch never leaves a truncated cache entry.
    """
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        if not os.path.isfile(path):
            raise CheckpointError(f"{uri}: no such checkpoint file")
        return path
    import fsspec

    try:
        fs, remote = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        remote_size = fs.size(remote)
    except FileNotFoundError:
        raise CheckpointError(f"{uri}: no such checkpoint file") from None
    except Exception as err:  # any backend error (auth, network, bad URI) becomes one clear message
        raise CheckpointError(f"{uri}: cannot reach checkpoint ({type(err).__name__}: {err})") from None
    root = Path(cache_dir or os.path.expanduser("~/.cache/sam2core"))
    local = root / hashlib.sha256(uri.encode()).hexdigest()[:16] / os.path.basename(remote.rstrip("/"))
    if local.is_file() and local.stat().st_size == remote_size:
        return str(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(f"{local.name}.{os.getpid()}.part")
    try:
        fs.get_file(remote, str(partial))
        os.replace(partial, local)
    except Exception as err:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"{uri}: download failed ({type(err).__name__}: {err})") from None
    return str(local)


def checkpoint_sha256(path: str) -> str:
    """Hex sha256 of the file at ``path``, streamed in 1 MiB chunks (checkpoints are too large to read at once);
    the digest ``CheckpointInfo.sha256`` records, for provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: str, uri: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or damaged files (KeyError, EOFError, ...)
        detail = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {detail[0]}" if detail else type(err).__name__
        raise CheckpointError(f"{uri}: not a readable PyTorch checkpoint ({reason})") from None
    return _state_dict_of(obj, uri)


def _state_dict_of(obj: object, uri: str) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint ({"model": sd}) or a bare state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{uri}: not a SAM 2 checkpoint (expected a state dict or {{'model': state dict}})")
    return obj


def _identify(state: dict[str, torch.Tensor], uri: str) -> tuple[str, str, str]:
    patch = state.get(_PATCH_KEY)
    if patch is None:
        raise CheckpointError(f"{uri}: not a SAM 2 checkpoint (no {_PATCH_KEY})")
    blocks = {key[len(_BLOCK_PREFIX):].split(".", 1)[0] for key in state if key.startswith(_BLOCK_PREFIX)}
    width = int(patch.shape[0])
    size = _SIZES.get((width, len(blocks)))
    if size is None:
        raise CheckpointError(f"{uri}: unknown Hiera trunk (width {width}, {len(blocks)} blocks)")
    version = "2.1" if "no_obj_embed_spatial" in state else "2.0"
    prefix = "sam2.1" if version == "2.1" else "sam2"
    return f"{prefix}_hiera_{size}", version, size

