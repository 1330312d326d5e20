"""Feature shards: ``fpnlink codec extract`` runs the edge half over images and writes P2..P5 ('0'..'3')
as fp16 in shard-NNNNN.pt files plus manifest.json; :class:`FeatureShards` loads them back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...shared.model import TRANSMITTED_SCALES, ModelConfig, load_bundle
from .images import iter_images

SHARD_FORMAT = "fpnlink.feature-shards/1"


@torch.inference_mode()
def extract_features(data: str, weights: str, out: Path, min_size: int = 512, max_size: int = 512,
                     limit: int | None = None, crop: int | None = None, seed: int = 0,
                     shard_items: int = 16, progress: bool = True) -> dict[str, Any]:
    """Run the edge half over ``data`` and write fp16 P2..P5 shards with a manifest.

    Args:
        crop: store a random ``crop x crop`` window of each scale (whole maps when smaller, or when
            omitted); keeps training shards small.
    """
    from tqdm import tqdm

    bundle = load_bundle(weights, ModelConfig(min_size=min_size, max_size=max_size), archs=("faster",))
    edge = bundle.edge_half(["detect"])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards: list[dict[str, Any]] = []
    buffer: dict[str, list[Tensor]] = {name: [] for name in TRANSMITTED_SCALES}
    buffer_items: list[dict[str, Any]] = []

    def flush() -> None:
        if not buffer_items:
            return
        name = f"shard-{len(shards):05d}.pt"
        torch.save({"format": SHARD_FORMAT, "features": {k: list(v) for k, v in buffer.items()},
                    "items": list(buffer_items)}, out / name)
        shards.append({"file": name, "count": len(buffer_items)})
        for values in buffer.values():
            values.clear()
        buffer_items.clear()

    count = 0
    for source, image in tqdm(iter_images(data, limit), desc="extract", disable=not progress, total=limit):
        features, image_sizes, original_sizes = edge([image])
        item = {"source": source, "original_size": list(original_sizes[0]), "input_size": list(image_sizes[0]),
                "shapes": {}}
        for name in TRANSMITTED_SCALES:
            tensor = features[name][0]
            if crop is not None:
                height, width = tensor.shape[-2:]
                ch, cw = min(crop, height), min(crop, width)
                top, left = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
                tensor = tensor[:, top:top + ch, left:left + cw]
            buffer[name].append(tensor.to(torch.float16).clone())
            item["shapes"][name] = list(tensor.shape)
        buffer_items.append(item)
        count += 1
        if len(buffer_items) >= shard_items:
            flush()
    flush()
    if count == 0:
        raise ValueError(f"no images in {data}")
    manifest = {
        "format": SHARD_FORMAT, "weights": weights, "backbone_fingerprint": bundle.backbone_fingerprint_for(["detect"]),
        "backbone_weights": bundle.backbone_weight_fingerprints["faster"],
        "min_size": min_size, "max_size": max_size, "crop": crop, "count": count, "shards": shards,
        "data": data,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


class FeatureShards:
    """Extracted features in memory: ``features[name][i]`` is item ``i``'s fp16 ``[C, h, w]``.

    Args:
        folder: what :func:`extract_features` wrote.
        limit: keep only the first ``limit`` items.
    """

    def __init__(self, folder: Path, limit: int | None = None) -> None:
        manifest_path = Path(folder) / "manifest.json"
        if not manifest_path.is_file():
            raise ValueError(f"no manifest.json in {folder}: run `fpnlink codec extract` first")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != SHARD_FORMAT:
            raise ValueError(f"{manifest_path} is not a {SHARD_FORMAT} manifest")
        self.features: dict[str, list[Tensor]] = {name: [] for name in TRANSMITTED_SCALES}
        self.items: list[dict[str, Any]] = []
        for shard in self.manifest["shards"]:
            blob = torch.load(Path(folder) / shard["file"], map_location="cpu", weights_only=True)
            for name in TRANSMITTED_SCALES:
                self.features[name].extend(blob["features"][name])
            self.items.extend(blob["items"])
        if limit is not None:
            self.items = self.items[:limit]
            self.features = {k: v[:limit] for k, v in self.features.items()}
        if not self.items:
            raise ValueError(f"{folder} holds no items")

    @classmethod
    def from_memory(cls, features: dict[str, list[Tensor]], items: list[dict[str, Any]],
                    manifest: dict[str, Any] | None = None) -> FeatureShards:
        """Wrap features already in memory (``items`` need ``original_size``)."""
        shards = cls.__new__(cls)
        shards.features = {name: list(features[name]) for name in TRANSMITTED_SCALES}
        shards.items = list(items)
        shards.manifest = {"format": SHARD_FORMAT, **(manifest or {})}
        return shards

    def __len__(self) -> int:
        return len(self.items)

    def normalisation(self) -> tuple[Tensor, Tensor]:
        """Per-scale, per-channel mean and std ``[4, C]`` over every stored position."""
        means, stds = [], []
        for name in TRANSMITTED_SCALES:
            total = count = squares = 0
            for tensor in self.features[name]:
                values = tensor.double().flatten(1)
                total = total + values.sum(dim=1)
                squares = squares + (values * values).sum(dim=1)
                count += values.shape[1]
            mean = total / count
            means.append(mean)
            stds.append((squares / count - mean * mean).clamp_min(1e-8).sqrt().clamp_min(1e-3))
        return torch.stack(means).float(), torch.stack(stds).float()

    def crop_size(self, name: str, crop: int) -> int:
        """Largest multiple of 4 not above ``crop`` that fits every item of scale ``name``."""
        smallest = min(min(t.shape[-2:]) for t in self.features[name])
        return max(4, min(crop, smallest) // 4 * 4)

    def sample(self, name: str, batch: int, crop: int, generator: torch.Generator) -> Tensor:
        """``[batch, C, crop, crop]`` float32 random crops of random items of scale ``name``."""
        tensors = self.features[name]
        picks = torch.randint(len(tensors), (batch,), generator=generator).tolist()
        crops = []
        for i in picks:
            tensor = tensors[i]
            height, width = tensor.shape[-2:]
            size_h, size_w = min(crop, height), min(crop, width)
            top = int(torch.randint(height - size_h + 1, (1,), generator=generator))
            left = int(torch.randint(width - size_w + 1, (1,), generator=generator))
            crops.append(tensor[:, top:top + size_h, left:left + size_w].float())
        return torch.stack(crops)
