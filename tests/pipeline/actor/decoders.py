"""The video-file decoders the decoding tests run: all of them, torchcodec skipped (with its reason) where it does
not load."""

from __future__ import annotations

import pytest

from pipeline.actor.decoding import decoder_unavailable

_TORCHCODEC = decoder_unavailable("torchcodec")
FILE_DECODERS = ["pyav", "decord",
                 pytest.param("torchcodec", marks=pytest.mark.skipif(_TORCHCODEC is not None, reason=str(_TORCHCODEC)))]
