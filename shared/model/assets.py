"""The committed ``synthetic`` reference weights: int8 parts, a manifest, and the verifying loader.

A trained bundle is stored as small parts so that it fits in the repository::

    bundle.pt ─> unique tensors ─> int8 per-output-channel (fp16 scales) ─> torch.save ─> zlib ─> part-000.bin ...
                                    (1-D tensors stay as they are)                               + manifest.json

:func:`synthetic_checkpoint` reverses this: it checks every part's SHA-256 against ``manifest.json``,
dequantises, and caches the rebuilt bundle (keyed by the manifest hash) so later calls are instant.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import WeightsError

ASSET_FORMAT = "fpnlink.asset/1"
SYNTHETIC_DIR = Path(__file__).with_name("assets") / "synthetic"
"""The committed ``synthetic`` weights, trained on 2 CPU cores at 256 px on ``fpnlink data synth --n 4000 --size 256
--seed 0`` (batch 2, SGD lr 0.01): 1,800 iterations in fp32 (warm-up 300), then resumed as a warm restart to 6,600
iterations with ``--precision bf16`` (76 min)::

    fpnlink train --data DATA --out CKPT --iters 1800 --warmup 300
    fpnlink train --data DATA --out CKPT --resume --iters 6600 --precision bf16
    fpnlink train --export-asset CKPT --asset-dir shared/model/assets/synthetic
"""
DEFAULT_CACHE = Path.home() / ".cache" / "fpnlink"
PART_BYTES = 15 * 2**20
"""Largest part file (15 MiB, under the 16 MB limit on committed files)."""
REGENERATE = (
    "regenerate with: fpnlink data synth --n 4000 --size 256 --out DATA && "
    "fpnlink train --data DATA --out CKPT && "
    "fpnlink train --export-asset CKPT --asset-dir shared/model/assets/synthetic"
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quantize(tensor: Tensor) -> dict[str, Tensor]:
    """Symmetric int8 per output channel (dim 0) with fp16 scales, for float tensors of rank >= 2."""
    flat = tensor.detach().float().reshape(tensor.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-8).half()
    q = torch.round(flat / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return {"q": q.reshape(tensor.shape), "scale": scale}


def dequantize(entry: dict[str, Tensor]) -> Tensor:
    """Inverse of :func:`quantize` (to float32)."""
    q = entry["q"]
    return (q.float().reshape(q.shape[0], -1) * entry["scale"].float()[:, None]).reshape(q.shape)


def _pack(bundle: dict[str, Any]) -> bytes:
    """Deduplicate the bundle's tensors by key, quantise, serialise and compress."""
    tensors: dict[str, Tensor] = {}
    keys: dict[str, list[str]] = {}
    for arch, state in bundle["models"].items():
        keys[arch] = list(state)
        for k, v in state.items():
            if k in tensors and not torch.equal(tensors[k], v):
                raise WeightsError(f"architectures disagree on {k}; the asset format needs shared tensors")
            tensors[k] = v
    stored = {k: quantize(v) if v.is_floating_point() and v.dim() >= 2 else {"raw": v} for k, v in tensors.items()}
    buffer = io.BytesIO()
    torch.save({"tensors": stored, "keys": keys, "meta": bundle.get("meta", {}), "format": bundle["format"]}, buffer)
    return zlib.compress(buffer.getvalue(), 6)


def _unpack(payload: bytes) -> dict[str, Any]:
    blob = torch.load(io.BytesIO(zlib.decompress(payload)), map_location="cpu", weights_only=True)
    tensors = {k: dequantize(e) if "q" in e else e["raw"] for k, e in blob["tensors"].items()}
    models = {arch: {k: tensors[k] for k in keys} for arch, keys in blob["keys"].items()}
    return {"format": blob["format"], "models": models, "meta": blob["meta"]}


def write_asset(checkpoint: Path, asset_dir: Path, part_bytes: int = PART_BYTES) -> dict[str, Any]:
    """Write ``checkpoint`` (an fpnlink bundle) as parts + ``manifest.json`` under ``asset_dir``.

    Returns:
        The manifest: ``{"format", "source", "payload_sha256", "parts": [{"file", "bytes", "sha256"}]}``.
    """
    checkpoint, asset_dir = Path(checkpoint), Path(asset_dir)
    if not checkpoint.is_file():
        raise WeightsError(f"no checkpoint at {checkpoint}")
    if not 1 <= part_bytes <= PART_BYTES:
        raise ValueError(f"part_bytes must be in [1, {PART_BYTES}], got {part_bytes}")
    bundle = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(bundle, dict) or "models" not in bundle:
        raise WeightsError(f"{checkpoint} is not an fpnlink bundle (write one with `fpnlink train`)")
    payload = _pack(bundle)
    asset_dir.mkdir(parents=True, exist_ok=True)
    for old in asset_dir.glob("part-*.bin"):
        old.unlink()
    parts = []
    for i, start in enumerate(range(0, len(payload), part_bytes)):
        chunk = payload[start:start + part_bytes]
        name = f"part-{i:03d}.bin"
        (asset_dir / name).write_bytes(chunk)
        parts.append({"file": name, "bytes": len(chunk), "sha256": _sha256(chunk)})
    manifest = {
        "format": ASSET_FORMAT,
        "encoding": "torch.save + zlib; rank>=2 float tensors int8 per output channel with fp16 scales",
        "source": {"file": checkpoint.name, "meta": bundle.get("meta", {}).get("train", {})},
        "payload_sha256": _sha256(payload),
        "parts": parts,
    }
    (asset_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def read_asset(asset_dir: Path) -> tuple[dict[str, Any], bytes]:
    """Read and verify the parts listed in ``asset_dir/manifest.json``; returns (manifest, payload)."""
    manifest_path = Path(asset_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise WeightsError(f"no weights asset at {asset_dir} (missing manifest.json); {REGENERATE}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != ASSET_FORMAT:
        raise WeightsError(f"{manifest_path} has format {manifest.get('format')!r}, expected {ASSET_FORMAT!r}")
    chunks = []
    for part in manifest["parts"]:
        path = Path(asset_dir) / part["file"]
        if not path.is_file():
            raise WeightsError(f"weights part {path} is missing; {REGENERATE}")
        chunk = path.read_bytes()
        if _sha256(chunk) != part["sha256"]:
            raise WeightsError(f"weights part {path} fails its SHA-256 check (corrupt or a Git LFS pointer); "
                               f"{REGENERATE}")
        chunks.append(chunk)
    payload = b"".join(chunks)
    if _sha256(payload) != manifest["payload_sha256"]:
        raise WeightsError(f"reassembled weights in {asset_dir} fail the payload SHA-256 check; {REGENERATE}")
    return manifest, payload


def assemble(asset_dir: Path, cache_dir: Path) -> Path:
    """Verify, dequantise and cache the asset in ``asset_dir``; returns the cached bundle path."""
    manifest_path = Path(asset_dir) / "manifest.json"
    key = _sha256(manifest_path.read_bytes())[:16] if manifest_path.is_file() else ""
    target = Path(cache_dir) / f"{Path(asset_dir).name}-{key}.pt"
    if key and target.is_file():
        return target
    _, payload = read_asset(asset_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    torch.save(_unpack(payload), tmp)
    os.replace(tmp, target)
    return target


def synthetic_checkpoint(asset_dir: Path = SYNTHETIC_DIR, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Path of the ``synthetic`` reference bundle, rebuilt from the committed parts on first use."""
    return assemble(asset_dir, cache_dir)
