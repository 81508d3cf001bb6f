"""The official SAM 2 package as a test oracle: build it with seeded random weights, and build ours from its weights.

Building both is shared with the engine benchmark (``testkit.oracle``, re-exported here); the rest is test-only.
Product code never touches the official package.
"""

from __future__ import annotations

import torch

from testkit.oracle import official_config_file, official_predictor, ours_from_official

__all__ = ["official_config_file", "official_predictor", "ours_from_official", "randomize_constant_params",
           "official_and_ours", "max_abs_diff", "report_parity"]


def randomize_constant_params(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Jitter every parameter whose entries are all equal (zero-initialised embeddings, LayerNorm ones/zeros,
    ConvNeXt layer scales) so parity tests exercise them; returns the module, changed in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            flat = param.detach().flatten()
            if flat.numel() and bool((flat == flat[0]).all()):
                param.add_(scale * torch.randn(param.shape, generator=gen).to(param.dtype))
    return module


def official_and_ours(name: str, image_size: int = 128, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Official predictor with its constant parameters jittered, and our model holding the very same weights."""
    official, _ = official_predictor(name, image_size, seed=seed)
    randomize_constant_params(official, seed=seed)
    return official, ours_from_official(official.state_dict(), name, image_size)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of two same-shaped tensors (compared in fp32)."""
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


def report_parity(model: str, check: str, diff: float) -> float:
    """Print one parity figure as a greppable ``PARITY`` line (run pytest with -s) and return it."""
    print(f"PARITY {model:20s} {check:34s} {diff:.3e}")
    return diff
