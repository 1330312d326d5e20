"""Codecs by name: one table, no duplicates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import UnsupportedError
from .base import FeatureCodec

_CODECS: dict[str, Callable[..., FeatureCodec]] = {}
T = TypeVar("T", bound=Callable[..., FeatureCodec])


def register_codec(name: str) -> Callable[[T], T]:
    """Decorator filing a codec class or builder under ``name``; a duplicate name is an error."""

    def wrap(factory: T) -> T:
        if name in _CODECS:
            raise ValueError(f"codec {name!r} is already registered")
        _CODECS[name] = factory
        return factory

    return wrap


def make_codec(name: str, **kwargs: Any) -> FeatureCodec:
    """Build a registered codec; :class:`UnsupportedError` lists the known names otherwise."""
    if name not in _CODECS:
        raise UnsupportedError(f"unknown codec {name!r}; known: {available_codecs()}")
    return _CODECS[name](**kwargs)


def available_codecs() -> list[str]:
    return sorted(_CODECS)
