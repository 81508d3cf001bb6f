"""The official SAM 2 package as an oracle: build it with seeded random weights, and build ours from its weights.

Used by the tests (through tests/oracle.py) and the engine benchmark; product code never touches the official package,
which is imported lazily here (it is a test dependency, not one of the product's).
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


def official_predictor(name: str, image_size: int, seed: int = 0, *, device: str = "cpu",
                       **predictor_kwargs) -> tuple[torch.nn.Module, dict]:
    """Official ``SAM2VideoPredictor`` (eval mode) on ``device`` with random weights drawn under ``seed``; returns it
    and its state dict.

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
        official_config_file(name), None, device=device, hydra_overrides_extra=overrides, **builder_args
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
