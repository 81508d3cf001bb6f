"""A replica keeps to the resources Ray gave it: its own GPU, its share of that GPU's memory, compile threads by its
CPUs (the decisions as pure functions; no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from pipeline.actor.replica import device_for
from pipeline.actor.worker import keep_to_share, memory_fraction, replica_threads
from pipeline.records import WorkerStartError


def test_device_when_ray_sets_cuda_visible_devices() -> None:
    """Ray narrows the actor's CUDA_VISIBLE_DEVICES to its GPU: whatever the id, it is the actor's device 0."""
    assert device_for("auto", [3], "3", ray_sets_visible=True) == torch.device("cuda")
    assert device_for("cuda", [3], "3", ray_sets_visible=True) == torch.device("cuda")
    assert device_for("auto", [], None, ray_sets_visible=True) == torch.device("cpu")
    assert device_for("cpu", [3], "3", ray_sets_visible=True) == torch.device("cpu")
    assert device_for("cuda", [], None, ray_sets_visible=True) == torch.device("cuda")  # no Ray GPU, forced


def test_device_when_ray_leaves_cuda_visible_devices_alone() -> None:
    """RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: every device of the node is visible; the replica takes the one
    Ray assigned, by its position among the visible ones."""
    assert device_for("auto", [2], None, ray_sets_visible=False) == torch.device("cuda", 2)
    assert device_for("cuda", ["5"], None, ray_sets_visible=False) == torch.device("cuda", 5)
    assert device_for("auto", ["6"], "4,5,6,7", ray_sets_visible=False) == torch.device("cuda", 2)
    assert device_for("auto", [1, 3], "0, 1,2,3", ray_sets_visible=False) == torch.device("cuda", 1)  # the first
    assert device_for("auto", ["GPU-b2"], "GPU-a1,GPU-b2", ray_sets_visible=False) == torch.device("cuda", 1)
    assert device_for("cpu", [2], None, ray_sets_visible=False) == torch.device("cpu")
    with pytest.raises(WorkerStartError, match="Ray assigned GPU 3.*'0,1'"):
        device_for("auto", [3], "0,1", ray_sets_visible=False)


def test_memory_is_capped_to_a_fractional_gpu_share() -> None:
    assert memory_fraction(0.5) == 0.5
    assert memory_fraction(0.25) == 0.25
    assert memory_fraction(1.0) is None  # a whole GPU: no cap
    assert memory_fraction(2.0) is None
    assert memory_fraction(0.0) is None  # no GPU


def test_threads_follow_the_actor_cpus() -> None:
    assert [replica_threads(c) for c in (0.5, 1.0, 2.0, 3.7, 16.0)] == [1, 1, 2, 3, 16]


def test_keep_to_share_sets_compile_threads_only_when_compiling(monkeypatch) -> None:
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "compile_threads", 64)
    keep_to_share(torch.device("cpu"), 0.5, 3.0, compile_steps=False)
    assert inductor_config.compile_threads == 64
    keep_to_share(torch.device("cpu"), 0.5, 3.0, compile_steps=True)  # no memory cap on the CPU
    assert inductor_config.compile_threads == 3
