"""sam2core: SAM 2 / SAM 2.1 models that load the official checkpoints, and a streaming full-video engine.

Usable on its own (a notebook needs nothing else)::

    from sam2core import build_model, VideoSession, ArrayFrameSource
    model = build_model("sam2.1_hiera_tiny", "sam2.1_hiera_tiny.pt", device="cuda")
    session = VideoSession(model, ArrayFrameSource(frames))       # frames: uint8 [N, H, W, 3]
    session.add_points(0, obj_id=1, points=[[210, 350]], labels=[1])
    for result in session.propagate():
        masks = result.mask_logits > 0                            # [n_obj, H, W] for result.frame_idx

A video of unknown length (a camera, a stream) is pushed one frame at a time; prompts go on the newest frame::

    session = VideoSession(model)                                 # no video: frames are pushed
    for t, frame in enumerate(stream):                            # frame: uint8 [H, W, 3]
        result = session.track(frame)                             # masks of the objects prompted so far
        if t == 0:
            session.add_points(0, obj_id=1, points=[[210, 350]], labels=[1])
"""

from sam2core.automatic import AutoMasks, AutomaticMaskGenerator
from sam2core.build import build_model
from sam2core.checkpoint import (CheckpointError, CheckpointInfo, checkpoint_sha256, fetch, inspect_checkpoint,
                                 load_checkpoint)
from sam2core.config import CONFIGS, MODEL_NAMES, ModelConfig, get_config
from sam2core.image_predictor import ImagePredictor
from sam2core.modeling.sam2 import SAM2Model
from sam2core.video import (ArrayFrameSource, DiscoveryOptions, FoundObject, FrameResult, FrameSource, ObjectPrompt,
                            PromptError, PushedFrames, SessionOptions, VideoSession, discover_objects)

__all__ = [
    "ArrayFrameSource", "AutoMasks", "AutomaticMaskGenerator", "CONFIGS", "CheckpointError", "CheckpointInfo",
    "DiscoveryOptions", "FoundObject", "FrameResult", "FrameSource", "ImagePredictor", "MODEL_NAMES", "ModelConfig",
    "ObjectPrompt", "PromptError", "PushedFrames", "SAM2Model", "SessionOptions", "VideoSession", "build_model", "checkpoint_sha256",
    "discover_objects", "fetch", "get_config", "inspect_checkpoint", "load_checkpoint",
]
