"""Architecture registry: the eight official SAM 2 / SAM 2.1 models as small dataclasses.

Only the trunk (Hiera) and the neck differ between sizes; the version (2.0 vs 2.1) flips three switches of the
object-pointer / no-object machinery. Everything else is shared and lives in ``ModelConfig`` defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MODEL_NAMES: tuple[str, ...] = tuple(
    f"{prefix}_hiera_{size}"
    for prefix in ("sam2", "sam2.1")
    for size in ("tiny", "small", "base_plus", "large")
)


@dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk hyper-parameters (the official defaults where a size does not override them)."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (2, 3, 16, 3)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Output channels of each stage, lowest resolution first (the FPN neck's input order)."""
        dims = [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]
        return tuple(reversed(dims))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build one SAM 2 model; ``image_size`` may be lowered (multiple of 32) for tests."""

    name: str
    version: str  # "2.0" or "2.1"
    size: str  # tiny / small / base_plus / large
    trunk: HieraConfig
    image_size: int = 1024
    d_model: int = 256
    mem_dim: int = 64
    backbone_stride: int = 16
    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    # version switches
    no_obj_embed_spatial: bool = False
    add_tpos_enc_to_obj_ptrs: bool = False
    proj_tpos_enc_in_obj_ptrs: bool = False
    use_signed_tpos_enc_to_obj_ptrs: bool = False
    checkpoint_url: str = ""

    def with_image_size(self, image_size: int | None) -> "ModelConfig":
        """Copy with another input resolution; it must tile the 8x8 window position embedding (multiple of 32)."""
        if image_size is None or image_size == self.image_size:
            return self
        if image_size <= 0 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")
        return replace(self, image_size=image_size)

    @property
    def feat_size(self) -> int:
        """Side of the stride-16 feature map (64 at 1024 px)."""
        return self.image_size // self.backbone_stride


_TRUNKS: dict[str, HieraConfig] = {
    "tiny": HieraConfig(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "small": HieraConfig(
        embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "base_plus": HieraConfig(embed_dim=112, num_heads=2),
    "large": HieraConfig(
        embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7),
    ),
}

_URL_DIRS = {"2.0": ("sam2", "072824"), "2.1": ("sam2.1", "092824")}


def _make(version: str, size: str) -> ModelConfig:
    prefix, date = _URL_DIRS[version]
    v21 = version == "2.1"
    return ModelConfig(
        name=f"{prefix}_hiera_{size}",
        version=version,
        size=size,
        trunk=_TRUNKS[size],
        no_obj_embed_spatial=v21,
        add_tpos_enc_to_obj_ptrs=v21,
        proj_tpos_enc_in_obj_ptrs=v21,
        use_signed_tpos_enc_to_obj_ptrs=v21,
        checkpoint_url=f"https://dl.fbaipublicfiles.com/segment_anything_2/{date}/{prefix}_hiera_{size}.pt",
    )


CONFIGS: dict[str, ModelConfig] = {
    cfg.name: cfg for cfg in (_make(v, s) for v in ("2.0", "2.1") for s in _TRUNKS)
}


def get_config(name: str, image_size: int | None = None) -> ModelConfig:
    """Look up one of the eight architectures by name (e.g. ``sam2.1_hiera_tiny``)."""
    try:
        cfg = CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}") from None
    return cfg.with_image_size(image_size)
