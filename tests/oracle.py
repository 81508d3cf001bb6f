"""The official SAM 2 package as a test oracle: build it with seeded random weights, and build ours from its weights.

Only tests import this module; product code never touches the official package.
"""

from __future__ import annotations

import torch

_SIZE_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def official_config_file(name: str) -> str:
    """Hydra config path inside the official package for one of our model names (e.g. ``sam2.1_hiera_tiny``)."""
    prefix, size = name.split("_hiera_")
    if prefix not in ("sam2", "sam2.1") or size not in _SIZE_SUFFIX:
        raise ValueError(f"not a SAM 2 model name: {name!r}")
    return f"configs/{prefix}/{prefix}_hiera_{_SIZE_SUFFIX[size]}.yaml"


def official_predictor(name: str, image_size: int, seed: int = 0, **predictor_kwargs) -> tuple[torch.nn.Module, dict]:
    """Official ``SAM2VideoPredictor`` on CPU with random weights drawn under ``seed``; returns it and its state dict.

    ``apply_postprocessing`` (default False here) and ``vos_optimized`` go to the official builder; any other keyword
    becomes a Hydra override ``++model.<key>=<value>`` (e.g. ``fill_hole_area=0``, ``non_overlap_masks=True``).
    """
    from sam2.build_sam import build_sam2_video_predictor

    builder_args = {"apply_postprocessing": predictor_kwargs.pop("apply_postprocessing", False)}
    if "vos_optimized" in predictor_kwargs:
        builder_args["vos_optimized"] = predictor_kwargs.pop("vos_optimized")
    overrides = [f"++model.image_size={image_size}"]
    overrides += [f"++model.{key}={_hydra_value(value)}" for key, value in predictor_kwargs.items()]
    torch.manual_seed(seed)
    predictor = build_sam2_video_predictor(
        official_config_file(name), None, device="cpu", hydra_overrides_extra=overrides, **builder_args
    )
    return predictor, predictor.state_dict()


def _hydra_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def ours_from_official(official: torch.nn.Module | dict, name: str, image_size: int) -> torch.nn.Module:
    """Our ``SAM2Model`` of the same architecture with the official weights loaded strictly (eval mode, CPU)."""
    from sam2core.build import build_model

    state = official if isinstance(official, dict) else official.state_dict()
    model = build_model(name, image_size=image_size)
    model.load_state_dict(state, strict=True)
    return model.eval()


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
