"""Content hashes that identify weights: which backbone produced a frame, which heads consume it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor

FINGERPRINT_HEX = 16


def hash_state(state: Mapping[str, Tensor], extra: str = "") -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict (order-independent), hex-truncated."""
    digest = hashlib.sha256(extra.encode())
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:FINGERPRINT_HEX]
