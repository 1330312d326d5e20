"""Torch device names as the command line gives them (``auto``, ``cpu``, ``cuda``)."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {name!r}")
    return torch.device(name)
