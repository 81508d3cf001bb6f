"""What the engine runs the model with: compute-dtype weight copies and the (optionally compiled) hot entry points.

Both belong to the engine, never to the model: nothing is patched into a ``SAM2Model``. They are built once per model
(and dtype, and switches) and shared by every session on it, so a pipeline worker compiles and warms up once.

- ``compute_weights``: for bf16, a view of the model whose matmul/conv weights (``nn.Linear``, ``nn.Conv2d``,
  ``nn.ConvTranspose2d``) are bf16 copies and whose other tensors are the model's own. Under autocast these are the
  weights autocast would cast on every call (to the same values), so the numbers equal the autocast path while the
  per-call casts disappear; LayerNorm, softmax and the free parameters stay where autocast keeps them (fp32).
- ``compiled``: ``torch.compile`` with ``fullgraph=True`` and static shapes; on CUDA with CUDA graphs
  (``reduce-overhead``) where ``cuda_graphs`` is asked for. The engine feeds these callables a fixed set of shapes
  (object buckets, memory-slot layouts), runs each frame's call pattern once on one thread before a pass that needs
  it (``Tracker.warm_up``), and clones the outputs of CUDA-graph calls that it keeps across steps.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Hashable
from typing import Callable, TypeVar, cast

import torch
from torch import nn

# every shape the engine feeds one compiled entry point is a graph of its own (buckets x memory layouts x dtypes);
# dynamo's default of 8 per code object would silently fall back to eager past that
RECOMPILE_LIMIT = 64
BACKEND = "inductor"  # tests that check guards and shapes only use "eager" (same graphs, no code generation)
_CAST_MODULES = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
_LOCK = threading.Lock()
_WEIGHTS: "weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, nn.Module]]" = weakref.WeakKeyDictionary()
_SHARED: "weakref.WeakKeyDictionary[nn.Module, dict[Hashable, object]]" = weakref.WeakKeyDictionary()
T = TypeVar("T")


def compute_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The model to run under autocast to ``dtype``: the model itself for float32, else (built once per model) a
    copy of its module tree sharing every tensor except the matmul/conv weights and biases, which are ``dtype``."""
    if dtype == torch.float32:
        return model
    with _LOCK:
        per_model = _WEIGHTS.setdefault(model, {})
        if dtype not in per_model:
            shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
            twin = copy.deepcopy(model, memo=shared)
            for module in twin.modules():
                if isinstance(module, _CAST_MODULES):
                    for name, param in list(module.named_parameters(recurse=False)):
                        setattr(module, name, nn.Parameter(param.detach().to(dtype), requires_grad=False))
            per_model[dtype] = twin
        return per_model[dtype]


def shared(model: nn.Module, key: Hashable, build: Callable[[], T]) -> T:
    """The object ``build()`` made for ``model`` and ``key``, made on first request (thread-safe)."""
    with _LOCK:
        per_model = _SHARED.setdefault(model, {})
        if key not in per_model:
            per_model[key] = build()
        return cast(T, per_model[key])


def compiled(fn: Callable, cuda_graphs: bool) -> Callable:
    """``fn`` compiled as one graph with static shapes (CUDA graphs when ``cuda_graphs``)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    mode = "reduce-overhead" if cuda_graphs else None
    return torch.compile(fn, fullgraph=True, dynamic=False, mode=mode, backend=BACKEND)


PAD_LIMIT = 0.25  # padded rows of a frame's tracking calls, at most this share of its objects


def object_buckets(cap: int) -> tuple[int, ...]:
    """Batch sizes a tracking step runs with under ``max_objects_per_batch = cap``: powers of two below it, and it."""
    sizes = []
    size = 1
    while size < cap:
        sizes.append(size)
        size *= 2
    return (*sizes, cap)


def split_objects(n: int, buckets: tuple[int, ...]) -> tuple[int, ...]:
    """The buckets of the tracking calls for ``n`` objects of a frame: the smallest bucket that holds what is left
    when that pads at most ``PAD_LIMIT`` of it, else the largest bucket that fits and the rest split again (9 of cap
    16: 8 + 1; 7: 8; 50: 16 + 16 + 16 + 2). Only the last call is padded, so padding stays within ``PAD_LIMIT``
    of ``n``, in at most one call more than the bucket count."""
    chunks: list[int] = []
    left = n
    while left > 0:
        fit = next((b for b in buckets if b >= left), None)
        if fit is not None and fit - left <= PAD_LIMIT * left:
            chunks.append(fit)
            break
        chunks.append(max(b for b in buckets if b <= left))
        left -= chunks[-1]
    return tuple(chunks)
