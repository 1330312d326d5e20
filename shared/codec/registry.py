"""Codecs by name: one table, no duplicates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UnsupportedError, WeightsError
from .base import FeatureCodec

_CODECS: dict[str, Callable[..., FeatureCodec]] = {}
DEFAULT_LEARNED_CODEC = "xscale"
"""The learned codec the product and its benchmarks use unless told otherwise."""
T = TypeVar("T", bound=Callable[..., FeatureCodec])


def register_codec(name: str) -> Callable[[T], T]:
    """Decorator filing a codec class or builder under ``name``; a duplicate name is an error."""

    def wrap(factory: T) -> T:
        if name in _CODECS:
            raise ValueError(f"codec {name!r} is already registered")
        _CODECS[name] = factory
        return factory

    return wrap


def make_codec(name: str, checkpoint: str | Path | None = None, **kwargs: Any) -> FeatureCodec:
    """Build a registered codec; :class:`UnsupportedError` lists the known names otherwise.

    Args:
        checkpoint: weights file of a codec that loads one (``has_weights``); its shipped default when
            ``None``. Naming one for a codec without weights is an :class:`UnsupportedError`.
    """
    if name not in _CODECS:
        raise UnsupportedError(f"unknown codec {name!r}; known: {available_codecs()}")
    if checkpoint is not None:
        if not codec_has_weights(name):
            raise UnsupportedError(f"codec {name!r} has no weights; a checkpoint ({checkpoint}) applies to "
                                   f"{[n for n in available_codecs() if codec_has_weights(n)]}")
        kwargs["checkpoint"] = checkpoint
    return _CODECS[name](**kwargs)


def codec_has_weights(name: str) -> bool:
    """Whether the registered codec ``name`` loads a weights file."""
    return bool(getattr(_CODECS.get(name), "has_weights", False))


def available_codecs() -> list[str]:
    return sorted(_CODECS)


def codec_for_checkpoint(checkpoint: str | Path) -> str:
    """The registered codec whose checkpoints have ``checkpoint``'s format; :class:`WeightsError` otherwise."""
    import torch

    try:
        found = torch.load(checkpoint, map_location="cpu", weights_only=True).get("format")
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise WeightsError(f"cannot read codec checkpoint {checkpoint}: {exc}") from exc
    formats = {factory.model_class().checkpoint_format: name
               for name, factory in _CODECS.items() if codec_has_weights(name)}
    if found not in formats:
        raise WeightsError(f"{checkpoint}: checkpoint format {found!r} is none of {sorted(formats)}")
    return formats[found]
