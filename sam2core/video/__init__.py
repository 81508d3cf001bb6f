"""Full-video propagation engine: a streaming, bounded-memory, object-batched re-implementation of the official
SAM 2 video predictor's semantics on top of ``sam2core.modeling.SAM2Model``, over a video or frames pushed one at a
time; and object discovery over it."""

from .discovery import DiscoveryOptions, FoundObject, ObjectPrompt, discover_objects
from .feature_stream import ArrayFrameSource, FrameSource
from .live import PushedFrames
from .options import SessionOptions
from .prompts import PromptError
from .results import FrameResult
from .session import VideoSession

__all__ = ["ArrayFrameSource", "DiscoveryOptions", "FoundObject", "FrameResult", "FrameSource", "ObjectPrompt",
           "PromptError", "PushedFrames", "SessionOptions", "VideoSession", "discover_objects"]
