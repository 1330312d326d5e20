"""The checkpoint that ships: ``fpnlink codec export`` drops the optimiser state; ``--half`` stores the
transforms in fp16."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...shared.codec import codec_for_checkpoint, make_codec
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
    codec = make_codec(codec_for_checkpoint(checkpoint), checkpoint)
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    blob.pop("train", None)
    if half:
        blob["state_dict"] = {key: value.half() if value.is_floating_point()
                              and any(part in key for part in HALF_PRECISION_PARTS) else value
                              for key, value in blob["state_dict"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out)
    return {"out": str(out), "bytes": out.stat().st_size, "codec": codec.name, "fingerprint": type(codec)(out).fingerprint}
