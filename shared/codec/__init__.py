"""Feature codecs behind one interface, registered by name."""

from .base import DTYPES, FeatureCodec, ScaleRecord
from .learned import LearnedCodec
from .quant import QuantCodec
from .raw import Raw16Codec, RawCodec
from .registry import (DEFAULT_LEARNED_CODEC, available_codecs, codec_for_checkpoint, codec_has_weights, make_codec,
                       register_codec)
from .xscale import CrossScaleCodec

__all__ = [
    "DEFAULT_LEARNED_CODEC", "DTYPES", "CrossScaleCodec", "FeatureCodec", "LearnedCodec", "QuantCodec", "Raw16Codec",
    "RawCodec", "ScaleRecord",
    "available_codecs", "codec_for_checkpoint", "codec_has_weights", "make_codec", "register_codec",
]
