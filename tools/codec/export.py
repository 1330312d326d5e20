"""The checkpoint that ships: ``fpnlink codec export`` drops the optimiser state; ``--half`` stores the
transforms in fp16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...shared.errors import WeightsError
from ...shared.codec import CrossScaleCodec, LearnedCodec
from ...shared.codec.learned import load_model

CODECS: tuple[type[LearnedCodec], ...] = (LearnedCodec, CrossScaleCodec)
"""The codecs whose checkpoints ``export`` writes, told apart by the checkpoint's format."""
HALF_PRECISION_PARTS = (".g_a.", ".g_s.", ".fuse.", ".out.", ".up.")
"""State-dict keys (substrings) ``export --half`` stores in float16: the analysis and synthesis transforms,
most of the bytes. The entropy models, the integer scale network, gains and tables stay as trained."""


def export_checkpoint(checkpoint: Path, out: Path, half: bool = False) -> dict[str, Any]:
    """Copy ``checkpoint`` without the optimiser state; the model part is loaded and checked first.

    Args:
        half: store the :data:`HALF_PRECISION_PARTS` in float16 (17.3 MB -> 10.9 MB for the shipped
            model; the CDF tables stay). The loader widens them back to float32, so encoder and decoder
            still run identical weights; the fingerprint is that of the widened weights.
    """
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    found = blob.get("format") if isinstance(blob, dict) else None
    codec = next((c for c in CODECS if c.model_class().checkpoint_format == found), None)
    if codec is None:
        raise WeightsError(f"{checkpoint}: format {found!r} is none of "
                           f"{[c.model_class().checkpoint_format for c in CODECS]}")
    load_model(checkpoint, model_class=codec.model_class())
    blob.pop("train", None)
    if half:
        blob["state_dict"] = {key: value.half() if value.is_floating_point()
                              and any(part in key for part in HALF_PRECISION_PARTS) else value
                              for key, value in blob["state_dict"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out)
    return {"out": str(out), "bytes": out.stat().st_size, "codec": codec.name, "fingerprint": codec(out).fingerprint}
