"""What every model replica of a job has, whatever its tasks are: the model built on the device Ray gave it, who it
is (``WorkerIdentity``: node, pid, device, dtype), the task under way for the driver's progress and time budgets
(``ready``, ``status``), and how a task's exception becomes a ``Fault`` (whether another attempt could succeed).
The video worker (``pipeline.actor.worker``) and the image worker (``pipeline.actor.image_worker``) build on it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import replace

import ray
import torch

from pipeline.actor.decoding import InputUnavailable
from pipeline.records import ClaimLost, Fault, WorkerIdentity, WorkerStartError, WorkerStatus
from pipeline.specs import ModelSpec
from sam2core.build import build_model
from sam2core.host_memory import keep_freed_memory

_DEVICE_ERRORS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "device-side assert",
                  "an illegal memory access")


NOSET_VISIBLE_DEVICES = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"  # Ray leaves CUDA_VISIBLE_DEVICES alone


def pick_device(requested: str) -> torch.device:
    """``auto`` → the GPU Ray assigned to this actor, else CPU; ``cuda`` → that GPU; ``cpu`` → CPU (see
    ``device_for``). A worker holding a GPU it cannot use refuses to start instead of silently running on the CPU."""
    gpus = ray.get_gpu_ids()
    if (gpus or requested == "cuda") and not torch.cuda.is_available():
        held = f"Ray gave it GPU {', '.join(str(g) for g in gpus)}" if gpus else "model.device=cuda"
        raise WorkerStartError(f"worker on {os.uname().nodename}: {held}, but torch {torch.__version__} cannot "
                               f"use CUDA (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
                               f"torch built with CUDA {torch.version.cuda})")
    ray_sets_visible = os.environ.get(NOSET_VISIBLE_DEVICES, "").lower() not in ("1", "true")
    return device_for(requested, gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), ray_sets_visible)


def device_for(requested: str, gpu_ids: Sequence[int | str], visible: str | None, ray_sets_visible: bool
               ) -> torch.device:
    """The device of a replica asking for ``requested`` that Ray assigned GPUs ``gpu_ids`` (its first one is used).

    Ray normally sets the actor's CUDA_VISIBLE_DEVICES to its GPUs, so the GPU is device 0 (``cuda``). With
    ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` the actor sees the node's devices (``visible``: the
    CUDA_VISIBLE_DEVICES it inherited, if any, whose entries Ray's ids are) and must pick its own by index, or
    every replica on the node would share device 0."""
    if requested == "cpu" or (requested == "auto" and not gpu_ids):
        return torch.device("cpu")
    if ray_sets_visible or not gpu_ids:
        return torch.device("cuda")
    assigned = str(gpu_ids[0])
    if visible is None:
        return torch.device("cuda", int(assigned))
    entries = [entry.strip() for entry in visible.split(",")]
    if assigned not in entries:
        raise WorkerStartError(f"Ray assigned GPU {assigned}, which CUDA_VISIBLE_DEVICES={visible!r} does not list")
    return torch.device("cuda", entries.index(assigned))


def pick_dtype(requested: str, device: torch.device) -> str:
    """``auto`` → bfloat16 on GPU (as the official tools run), float32 on CPU."""
    if requested != "auto":
        return requested
    return "bfloat16" if device.type == "cuda" else "float32"


def fault_of(exc: BaseException) -> Fault:
    """The fault of an unexpected exception: out of memory, a GPU fault that poisons the process, the output prefix
    taken over by another job, else ERROR."""
    if isinstance(exc, ClaimLost):
        return Fault.CLAIM_LOST
    if isinstance(exc, torch.OutOfMemoryError):
        return Fault.OUT_OF_MEMORY
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if (accelerator_error is not None and isinstance(exc, accelerator_error)) or any(
            marker in str(exc) for marker in _DEVICE_ERRORS):
        return Fault.GPU_FAULT
    return Fault.ERROR


class Replica:
    """Base of the actor classes: one model replica, ``ready`` and ``status`` for the driver, the task under way
    behind a lock (``status`` answers from its own concurrency group while a task runs)."""

    def __init__(self, model: ModelSpec, device: torch.device, dtype: str) -> None:
        torch.manual_seed(model.seed)
        if device.type == "cpu":
            keep_freed_memory()  # the actor's process is the replica's: its CPU steps reuse freed memory
        self.device = device
        self.model = build_model(model.name, model.checkpoint, image_size=model.image_size, device=device,
                                 storage_options=model.storage_options, cache_dir=model.cache_dir)
        self.identity = WorkerIdentity(ray.get_runtime_context().get_node_id(), os.getpid(), str(device), dtype)
        self._lock = threading.Lock()
        self._status: WorkerStatus | None = None  # the task under way

    def ready(self) -> WorkerIdentity:
        """Where this replica runs (node, pid, device, dtype); returns once the model is built."""
        return self.identity

    @ray.method(concurrency_group="status")
    def status(self) -> WorkerStatus | None:
        """The task under way: its key, frames or images (done and in all), objects, start time (wall clock); None
        if idle."""
        with self._lock:
            return None if self._status is None else replace(self._status)


def failure(exc: Exception) -> tuple[Fault, str]:
    """The fault of a task's exception and its one-line reason: a storage outage, or what ``fault_of`` says."""
    if isinstance(exc, InputUnavailable):
        return Fault.INPUT_UNAVAILABLE, f"{type(exc).__name__}: {exc}"
    fault = fault_of(exc)
    kind = {Fault.OUT_OF_MEMORY: "out of memory", Fault.GPU_FAULT: "GPU fault"}.get(fault, type(exc).__name__)
    return fault, f"{kind}: {exc}".splitlines()[0]
