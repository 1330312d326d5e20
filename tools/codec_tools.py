"""Features for, training of, and RD evaluation of the learned codec: ``fpnlink codec {extract,train,eval}``.

::

    fpnlink codec extract --data SRC --weights W --out SHARDS [--min-size --max-size --limit --crop]
        SRC: an image folder, a COCO json (images next to it or under ../images/<split>/), or
        synth:N[:SEED[:SIZE]] (scenes from tools.synth.render_scene, random textures without it).
        Writes P2..P5 ('0'..'3') as fp16 in shard-NNNNN.pt files plus manifest.json.
    fpnlink codec train --shards SHARDS --out CKPT [--steps --batch --lr --device auto --resume ...]
        L = R + lambda(phi) * D, phi ~ U[0, N-1] per item, lambda log-interpolated between the
        per-gain values; R in bits per feature-map position, D = MSE of the normalised features.
        Each item's L is divided by sqrt(lambda), which leaves its optimum where it was but lets
        every rate level pull comparably on the shared transforms: unweighted, the largest lambda's
        items dominate the gradient and the low-phi gains barely train (measured on synthetic-backbone
        features, lambda 0.5..2048: after 11k steps phi 0 still spent 4.2 bits per input pixel on P2).
    fpnlink codec export --ckpt CKPT --out FILE [--half]
        the checkpoint without its optimiser state (what ships); --half stores the transforms in fp16.
    fpnlink codec eval --shards HELDOUT --ckpt CKPT --out DIR
        rd.json, rd.md and rd.png: bits per input pixel against feature PSNR for each scale,
        learned (real bytes, container header included) against ``quant`` at 1..8 bits.

Feature PSNR of one map is ``10 log10((max x - min x)^2 / MSE)``, averaged over images; "all" is the
total rate against the mean of the four scales' PSNR. Bits per input pixel divide by the ORIGINAL
image's pixel count.

Shared or per-scale transforms: ``--scales 0`` trains on P2 alone; the measurement that chose per-scale
transforms is in ``fpnlink.shared.codec.hyperprior``'s docstring. ``--shared`` trains one set of
transforms for all scales.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..shared.codec import ScaleRecord, make_codec
from ..shared.codec.learned import SCALE_INDEX, LearnedCodec
from ..shared.errors import FpnlinkError
from ..shared.model import TRANSMITTED_SCALES, ModelConfig, load_bundle
from .bd_rate import bd_rate
from .devices import resolve_device

SHARD_FORMAT = "fpnlink.feature-shards/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_LAMBDAS = (8.0, 32.0, 128.0, 512.0, 2048.0, 8192.0)
"""Distortion weight per gain level (``N = 6``), in bits per position per unit normalised MSE."""
RECONSTRUCTION_TOLERANCE = 1e-5
"""Largest relative difference between two decodes of one stream still counted as float32 rounding."""
_SYNTH = re.compile(r"^synth:(\d+)(?::(\d+))?(?::(\d+))?$")


# ------------------------------------------------------------------------------------------ image sources


def _textured_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random textured RGB image (smooth blobs + stripes + noise), uint8 ``[size, size, 3]``."""
    cells = int(rng.integers(3, 9))
    grid = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(4, size / 4)
    image += 0.2 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)[..., None]
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def render_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """One synthetic scene (``tools.synth.render_scene`` when present, random texture otherwise)."""
    try:
        from .synth import render_scene
    except ImportError:
        return _textured_image(rng, size)
    return render_scene(rng, size)[0]


def _to_tensor(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255


def iter_images(data: str, limit: int | None = None) -> Iterator[tuple[str, Tensor]]:
    """``(name, [3, H, W] float in [0, 1])`` from a folder, a COCO json or ``synth:N[:SEED[:SIZE]]``."""
    if match := _SYNTH.match(data):
        count, seed, size = int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 512)
        for i in range(count if limit is None else min(count, limit)):
            yield f"synth:{seed}:{i}", _to_tensor(render_image(np.random.default_rng([seed, i]), size))
        return
    path = Path(data)
    if path.is_file() and path.suffix == ".json":
        files = _coco_files(path)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise ValueError(f"--data must be an image folder, a COCO json or synth:N[:SEED[:SIZE]], got {data!r}")
    if not files:
        raise ValueError(f"no images found in {data}")
    for file in files[:limit]:
        with Image.open(file) as image:
            yield str(file), _to_tensor(np.asarray(image.convert("RGB")))


def _coco_files(annotations: Path) -> list[Path]:
    """Image paths of a COCO json: ``../images/<stem>/`` (fpnlink synth layout) or beside the json."""
    images = json.loads(annotations.read_text())["images"]
    candidates = [annotations.parent.parent / "images" / annotations.stem, annotations.parent]
    root = next((c for c in candidates if images and (c / images[0]["file_name"]).is_file()), None)
    if root is None:
        raise ValueError(f"cannot find the images of {annotations} (looked in {[str(c) for c in candidates]})")
    return [root / entry["file_name"] for entry in images]


# ---------------------------------------------------------------------------------------------- extract


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


# ------------------------------------------------------------------------------------------------ train


@dataclass
class TrainSettings:
    """Everything that shapes a training run; stored in the checkpoint.

    Args:
        steps: total optimiser steps (a resumed run continues up to this count).
        batch: crops per step (all from one scale).
        lr: Adam learning rate (divided by 10 for the last 10% of the steps).
        crop: crop side in feature-map positions (capped by the smallest map of each scale).
        lambdas: distortion weight per gain level (its length sets ``N``).
        scales: FPN scales trained on (a per-scale model trains on one).
        save_every: steps between checkpoints.
        max_minutes: wall-clock budget of this invocation (stops early, saving; the learning-rate drop
            then comes at 90% of the budget); none when 0.
        seed: sampling seed.
        latent, hyper, hidden: architecture sizes (see ``HyperpriorConfig``).
        shared: one set of transforms for every scale instead of one per scale.
        monotone: weight of the rate-ordering penalty: each item is also run at a phi lower by
            U[0.25, 1] and ``monotone * relu(R(lower phi) - R(phi))`` is added, so that the estimated
            rate falls with phi item by item, not only on average; 0 skips the second pass.
    """

    steps: int = 4000
    batch: int = 8
    lr: float = 5e-4
    crop: int = 48
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    scales: tuple[str, ...] = TRANSMITTED_SCALES
    save_every: int = 250
    max_minutes: float = 0.0
    seed: int = 0
    latent: int = 128
    hyper: int = 64
    hidden: int = 64
    shared: bool = False
    monotone: float = 0.0


def _lambda_for(phi: Tensor, lambdas: tuple[float, ...]) -> Tensor:
    """Log-linear interpolation of ``lambdas`` at continuous gain positions ``phi``."""
    logs = torch.tensor([math.log(v) for v in lambdas], device=phi.device)
    low = phi.floor().long().clamp(0, len(lambdas) - 2)
    frac = phi - low.to(phi.dtype)
    return torch.exp(logs[low] * (1 - frac) + logs[low + 1] * frac)


def train_codec(shards: FeatureShards, out: Path, settings: TrainSettings, device: str = "auto",
                resume: bool = False, progress: bool = True, retarget: tuple[float, ...] | None = None,
                ) -> dict[str, Any]:
    """Train (or continue training) a variable-rate model; returns the last logged values.

    A resumed run keeps the stored settings but for ``steps``, ``save_every``, ``max_minutes`` and
    ``monotone``. ``retarget`` gives the gain levels new distortion weights on resume (as many as stored),
    e.g. to widen the rate range while fine-tuning on the features of a retrained backbone.
    """
    from tqdm import tqdm

    from ..shared.codec.hyperprior import FeatureHyperprior, HyperpriorConfig

    target = resolve_device(device)
    start = 0
    generator = torch.Generator().manual_seed(settings.seed)
    if resume and out.is_file():
        blob = torch.load(out, map_location="cpu", weights_only=True)
        model = FeatureHyperprior.from_checkpoint(blob)
        state = blob["train"]
        stored = {k: tuple(v) if isinstance(v, list) else v for k, v in state["settings"].items()}
        lambdas = stored["lambdas"]
        if retarget is not None:
            if len(retarget) != len(lambdas):
                raise ValueError(f"--lambdas: the checkpoint has {len(lambdas)} gain levels, got {len(retarget)} values")
            lambdas = tuple(retarget)
        settings = TrainSettings(**{**stored, "steps": settings.steps, "save_every": settings.save_every,
                                    "max_minutes": settings.max_minutes, "monotone": settings.monotone,
                                    "lambdas": lambdas})
        start = int(state["step"])
        generator.set_state(state["generator"])
    else:
        config = HyperpriorConfig(latent=settings.latent, hyper=settings.hyper, hidden=settings.hidden,
                                  num_gains=len(settings.lambdas), per_scale=not settings.shared)
        model = FeatureHyperprior(config)
        model.set_normalisation(*shards.normalisation())
        state = None
    bad = [s for s in settings.scales if s not in SCALE_INDEX]
    if bad or not settings.scales:
        raise ValueError(f"scales must be a non-empty subset of {list(SCALE_INDEX)}, got {list(settings.scales)}")
    model.to(target).train()
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if not n.endswith("quantiles")],
                                 lr=settings.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    crops = {name: shards.crop_size(name, settings.crop) for name in settings.scales}
    high = float(len(settings.lambdas) - 1)
    meta = {"backbone_fingerprint": shards.manifest.get("backbone_fingerprint"),
            "weights": shards.manifest.get("weights"), "items": len(shards),
            "min_size": shards.manifest.get("min_size"), "max_size": shards.manifest.get("max_size")}
    logged: dict[str, Any] = {}
    bar = tqdm(range(start, settings.steps), desc="train", disable=not progress, initial=start,
               total=settings.steps, mininterval=2)
    started = time.monotonic()
    budget = settings.max_minutes * 60
    for step in bar:
        elapsed = time.monotonic() - started
        late = step >= 0.9 * settings.steps or (budget > 0 and elapsed >= 0.9 * budget)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * (0.1 if late else 1.0)
        name = settings.scales[int(torch.randint(len(settings.scales), (1,), generator=generator))]
        x = shards.sample(name, settings.batch, crops[name], generator).to(target)
        phi = (torch.rand(settings.batch, generator=generator) * high).to(target)
        scale = torch.full((settings.batch,), SCALE_INDEX[name], dtype=torch.long, device=target)
        result = model(x, scale, phi)
        positions = x.shape[-2] * x.shape[-1]
        rate = result["bits"] / positions
        distortion = (result["x_hat_norm"] - result["x_norm"]).pow(2).mean(dim=(1, 2, 3))
        weight = _lambda_for(phi, settings.lambdas)
        loss = ((rate + weight * distortion) / weight.sqrt()).mean()
        if settings.monotone > 0:
            lower = (phi - 0.25 - 0.75 * torch.rand(settings.batch, generator=generator).to(target)).clamp_min(0)
            lower_rate = model(x, scale, lower)["bits"] / positions
            loss = loss + settings.monotone * torch.relu(lower_rate - rate).mean()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        logged = {"step": step + 1, "loss": loss.item(), "bits_per_position": rate.mean().item(),
                  "mse": distortion.mean().item()}
        bar.set_postfix(loss=f"{logged['loss']:.3g}", bpp=f"{logged['bits_per_position']:.3g}",
                        mse=f"{logged['mse']:.3g}")
        out_of_time = budget > 0 and time.monotonic() - started >= budget
        if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps or out_of_time:
            _save(model, optimizer, settings, step + 1, generator, meta, out)
        if out_of_time:
            break
    bar.close()
    if start >= settings.steps and not out.is_file():
        _save(model, optimizer, settings, start, generator, meta, out)
    return logged


def _save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, settings: TrainSettings, step: int,
          generator: torch.Generator, meta: dict[str, Any], out: Path) -> None:
    """Freeze the tables and write the checkpoint atomically (codable at every save)."""
    model.update()
    blob = model.checkpoint({**meta, "step": step})
    settings_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    blob["train"] = {"step": step, "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                     "settings": settings_dict}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(out.suffix + ".partial")
    torch.save(blob, partial)
    partial.replace(out)


# ------------------------------------------------------------------------------------------------- eval


def feature_psnr(original: Tensor, decoded: Tensor) -> float:
    """``10 log10(peak^2 / MSE)`` with peak = the original map's value range."""
    original, decoded = original.double(), decoded.double()
    mse = float((original - decoded).pow(2).mean())
    peak = float(original.max() - original.min())
    return 100.0 if mse == 0 else 10 * math.log10(max(peak, 1e-12) ** 2 / mse)


@torch.inference_mode()
def rd_points(codec: Any, shards: FeatureShards, phis: list[float], scales: tuple[str, ...] = TRANSMITTED_SCALES,
              ) -> list[dict[str, Any]]:
    """Code every held-out item at every ``phi`` with real bytes; one point per ``phi``.

    Returns:
        ``[{"phi", "scales": {name: {"bpp", "psnr", "bytes"}}, "all": {"bpp", "psnr"}}]``, where bpp is
        bits per original input pixel summed over images, psnr the mean over images.
    """
    pixels = sum(item["original_size"][0] * item["original_size"][1] for item in shards.items)
    points = []
    for phi in phis:
        per_scale = {}
        for name in scales:
            total_bytes, psnrs = 0, []
            for i in range(len(shards)):
                tensor = shards.features[name][i].float().unsqueeze(0)
                records = codec.encode({name: tensor}, {name: phi})
                decoded = codec.decode(records)[name].float()
                total_bytes += sum(len(r.payload) for r in records)
                psnrs.append(feature_psnr(tensor, decoded))
            per_scale[name] = {"bytes": total_bytes, "bpp": total_bytes * 8 / pixels, "psnr": float(np.mean(psnrs))}
        points.append({
            "phi": phi, "scales": per_scale,
            "all": {"bpp": sum(v["bpp"] for v in per_scale.values()),
                    "psnr": float(np.mean([v["psnr"] for v in per_scale.values()]))},
        })
    return points


def _bd(anchor: list[dict[str, Any]], test: list[dict[str, Any]], key: str | None) -> float | None:
    pick = (lambda p: p["all"]) if key is None else (lambda p: p["scales"][key])
    try:
        return round(bd_rate([pick(p)["bpp"] for p in anchor], [pick(p)["psnr"] for p in anchor],
                             [pick(p)["bpp"] for p in test], [pick(p)["psnr"] for p in test]), 2)
    except ValueError:
        return None


def evaluate_codec(shards: FeatureShards, checkpoint: Path, out: Path | None = None,
                   phis: list[float] | None = None, quant_bits: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8),
                   scales: tuple[str, ...] = TRANSMITTED_SCALES, device: str = "cpu") -> dict[str, Any]:
    """RD table of the learned codec against ``quant``; writes rd.json, rd.md and rd.png under ``out``."""
    learned = LearnedCodec(checkpoint, device=resolve_device(device))
    low, high = learned.phi_range
    phis = phis if phis is not None else [float(v) for v in np.linspace(low, high, 2 * int(high - low) + 1)]
    learned_points = rd_points(learned, shards, phis, scales)
    quant_points = rd_points(make_codec("quant"), shards, [float(b) for b in quant_bits], scales)
    report = {
        "checkpoint": str(checkpoint), "fingerprint": learned.fingerprint, "items": len(shards),
        "shards_backbone": shards.manifest.get("backbone_fingerprint"),
        "learned": learned_points, "quant": quant_points,
        "bd_rate_vs_quant_percent": {name: _bd(quant_points, learned_points, name) for name in scales},
        "rate_monotonic": _monotonic(learned_points),
    }
    if set(scales) == set(TRANSMITTED_SCALES):
        report["bd_rate_vs_quant_percent"]["all"] = _bd(quant_points, learned_points, None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "rd.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "rd.md").write_text(rd_markdown(report))
        plot_rd(report, out / "rd.png")
    return report


def _monotonic(points: list[dict[str, Any]]) -> dict[str, bool]:
    """Per scale (and ``all``): bytes never rise as phi falls."""
    ordered = sorted(points, key=lambda p: p["phi"])
    series = {name: [p["scales"][name]["bytes"] for p in ordered] for name in ordered[0]["scales"]}
    series["all"] = [sum(v["bytes"] for v in p["scales"].values()) for p in ordered]
    return {name: all(a <= b for a, b in zip(values, values[1:])) for name, values in series.items()}


def rd_markdown(report: dict[str, Any]) -> str:
    """The RD table as Markdown: one row per (codec, phi), bpp and PSNR per scale."""
    names = list(report["learned"][0]["scales"])
    head = "| codec | phi | " + " | ".join(f"{n} bpp | {n} dB" for n in names) + " | all bpp | all dB |"
    lines = [f"# Learned codec RD ({report['items']} held-out items)", "", head,
             "|" + "---|" * (2 + 2 * len(names) + 2)]
    for codec in ("learned", "quant"):
        for point in report[codec]:
            cells = " | ".join(f"{point['scales'][n]['bpp']:.4f} | {point['scales'][n]['psnr']:.2f}" for n in names)
            lines.append(f"| {codec} | {point['phi']:g} | {cells} | {point['all']['bpp']:.4f} | "
                         f"{point['all']['psnr']:.2f} |")
    lines += ["", "BD-rate of learned against quant (feature PSNR vs bits per input pixel; negative = fewer bits):",
              ""]
    lines += [f"- {k}: {v if v is not None else 'no PSNR overlap'}" + ("%" if v is not None else "")
              for k, v in report["bd_rate_vs_quant_percent"].items()]
    lines.append(f"\nRate monotonic in phi (per scale and in total): {report['rate_monotonic']}\n")
    return "\n".join(lines)


def plot_rd(report: dict[str, Any], path: Path) -> None:
    """bits per input pixel (log x) against feature PSNR, one panel per scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["learned"][0]["scales"])
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
    for axis, name in zip(axes[0], names):
        for codec, style in (("learned", "o-"), ("quant", "s--")):
            points = report[codec]
            axis.plot([p["scales"][name]["bpp"] for p in points], [p["scales"][name]["psnr"] for p in points],
                      style, label=codec, markersize=4)
        axis.set_xscale("log")
        axis.set_title(f"scale {name} (BD-rate {report['bd_rate_vs_quant_percent'].get(name)}%)", fontsize=9)
        axis.set_xlabel("bits per input pixel")
        axis.set_ylabel("feature PSNR (dB)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------- cross-process check


def _decode_child(checkpoint: str, records: list[ScaleRecord], threads: int, sender: Any) -> None:
    """Child side of :func:`decode_in_subprocess`: decode, send numpy arrays (copied by pickle) back."""
    try:
        torch.set_num_threads(threads)
        codec = LearnedCodec(checkpoint)
        results = []
        for record in records:
            out = codec.decode_symbols(record)
            results.append({key: out[key].numpy() for key in ("x_hat", "y_symbols", "z_symbols", "indexes")})
        sender.send(("ok", results))
    except Exception as exc:  # reported to the parent, which raises
        sender.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        sender.close()


def decode_in_subprocess(checkpoint: Path, records: list[ScaleRecord], threads: int = 2, timeout: float = 600.0,
                         ) -> list[dict[str, Tensor]]:
    """Decode ``records`` in a fresh spawned process with ``threads`` torch threads.

    Raises:
        RuntimeError: the child failed, died or did not answer within ``timeout`` seconds.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_decode_child, args=(str(checkpoint), records, threads, sender), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise RuntimeError(f"decoder process gave no answer within {timeout:.0f} s")
        status, payload = receiver.recv()
    except EOFError:
        process.join(10)
        raise RuntimeError(f"decoder process died (exit code {process.exitcode})") from None
    finally:
        receiver.close()
        process.join(10)
        if process.is_alive():
            process.kill()
    if status != "ok":
        raise RuntimeError(f"decoder process failed: {payload}")
    return [{key: torch.from_numpy(value) for key, value in item.items()} for item in payload]


def cross_process_check(checkpoint: Path, features: dict[str, Tensor], phi: float,
                        threads: tuple[int, int] = (1, 2)) -> dict[str, Any]:
    """Encode here with ``threads[0]`` threads, decode in another process with ``threads[1]``.

    Returns:
        ``symbols_identical`` (every hyper-latent and latent symbol and every CDF index equal to the
        encoder's: the property the integer scale network guarantees), ``reconstruction_identical``
        and ``reconstruction_max_abs_diff`` / ``..._relative`` (the float synthesis transform may
        round differently with another thread count: oneDNN's 1x1 convolution inside IGDN does),
        and ``deterministic``: symbols identical and reconstructions equal to float32 rounding
        (relative difference below :data:`RECONSTRUCTION_TOLERANCE`).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads[0])
    try:
        codec = LearnedCodec(checkpoint)
        records = codec.encode(features, dict.fromkeys(features, phi))
        local = [codec.decode_symbols(record) for record in records]
        sent = {}
        for record in records:
            coded = codec.model.compress(features[record.name], SCALE_INDEX[record.name], phi)
            sent[record.name] = coded
    finally:
        torch.set_num_threads(previous)
    remote = decode_in_subprocess(checkpoint, records, threads[1])
    symbols = all(
        torch.equal(sent[r.name]["y_symbols"], out["y_symbols"]) and torch.equal(sent[r.name]["z_symbols"],
                                                                                 out["z_symbols"])
        and torch.equal(sent[r.name]["indexes"], out["indexes"])
        for r, out in zip(records, remote)
    )
    diff = max(float((a["x_hat"] - b["x_hat"]).abs().max()) for a, b in zip(local, remote))
    relative = max(float((a["x_hat"] - b["x_hat"]).abs().max() / a["x_hat"].abs().max().clamp_min(1e-12))
                   for a, b in zip(local, remote))
    return {"deterministic": bool(symbols and relative <= RECONSTRUCTION_TOLERANCE),
            "symbols_identical": bool(symbols), "reconstruction_identical": diff == 0.0,
            "reconstruction_max_abs_diff": diff, "reconstruction_max_relative_diff": relative,
            "threads": list(threads)}


# -------------------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fpnlink codec {extract,train,eval}``."""
    parser = subparsers.add_parser("codec", help="learned feature codec: extract features, train, evaluate")
    sub = parser.add_subparsers(dest="codec_command", required=True)

    p = sub.add_parser("extract", help="run the backbone over images and store P2..P5 as fp16 shards")
    p.add_argument("--data", required=True, help="image folder, COCO json, or synth:N[:SEED[:SIZE]]")
    p.add_argument("--weights", default="random:0", help="backbone weights (coco, random:SEED, synthetic, path)")
    p.add_argument("--out", type=Path, required=True, help="shard folder to write")
    p.add_argument("--min-size", type=int, default=512, help="network-input shorter side")
    p.add_argument("--max-size", type=int, default=512, help="network-input longer-side cap")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--crop", type=int, help="store one random crop of this side per scale (training shards)")
    p.add_argument("--seed", type=int, default=0, help="crop positions")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=_run_extract)

    p = sub.add_parser("train", help="train the variable-rate model")
    p.add_argument("--shards", type=Path, required=True, help="training shards (`fpnlink codec extract --crop`)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (and resume from)")
    defaults = TrainSettings()
    int_options = {
        "steps": "total optimiser steps; a resumed run continues up to this count",
        "batch": "crops per step", "crop": "crop side in feature-map positions",
        "save_every": "steps between checkpoints", "seed": "sampling seed",
        "latent": "latent channels M", "hyper": "hyper-latent channels", "hidden": "hidden channels of the transforms",
    }
    for name, text in int_options.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name),
                       help=f"{text} (default {getattr(defaults, name)})")
    p.add_argument("--lr", type=float, default=defaults.lr,
                   help=f"Adam learning rate, divided by 10 for the last 10%% (default {defaults.lr:g})")
    p.add_argument("--monotone", type=float, default=defaults.monotone,
                   help="weight of the penalty on rate rising as phi falls (a second pass per step; 0: off)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this many minutes")
    p.add_argument("--lambdas", help="distortion weight per gain level, comma-separated (count sets N; default "
                   f"{','.join(f'{v:g}' for v in defaults.lambdas)}); with --resume, new weights for the stored levels")
    p.add_argument("--scales", default=",".join(defaults.scales), help="scales to train on, e.g. 0 for P2 only")
    p.add_argument("--limit", type=int, help="use only the first LIMIT items")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--shared", action="store_true", help="one set of transforms for all scales")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out when it exists (also fine-tunes on other shards, e.g. a retrained backbone)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)

    p = sub.add_parser("export", help="write a checkpoint without its training state (what LearnedCodec loads)")
    p.add_argument("--ckpt", type=Path, required=True, help="training checkpoint (`fpnlink codec train --out`)")
    p.add_argument("--out", type=Path, required=True, help="codec file to write")
    p.add_argument("--half", action="store_true", help="store the analysis/synthesis transforms in float16")
    p.set_defaults(func=_run_export)

    p = sub.add_parser("eval", help="RD table and plot against the quant codec on held-out shards")
    p.add_argument("--shards", type=Path, required=True, help="held-out shards (not the training ones)")
    p.add_argument("--ckpt", type=Path, required=True, help="codec checkpoint to evaluate")
    p.add_argument("--out", type=Path, required=True, help="folder for rd.json, rd.md, rd.png")
    p.add_argument("--phis", help="comma-separated phi values (default: every half step of the range)")
    p.add_argument("--scales", default=",".join(TRANSMITTED_SCALES), help="comma-separated scales to evaluate")
    p.add_argument("--limit", type=int, help="use only the first LIMIT items")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=_run_eval)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _scales(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _fail(command: str, exc: Exception) -> int:
    print(f"fpnlink codec {command}: error: {exc}", file=sys.stderr)
    return 2


def _run_extract(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        manifest = extract_features(args.data, args.weights, args.out, args.min_size, args.max_size, args.limit,
                                    args.crop, args.seed)
    except (ValueError, FpnlinkError, OSError) as exc:
        return _fail("extract", exc)
    print(json.dumps({k: manifest[k] for k in ("count", "backbone_fingerprint", "weights")}, indent=2))
    return 0


def _run_train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        lambdas = None if args.lambdas is None else tuple(_floats(args.lambdas))
        if lambdas is not None and (len(lambdas) < 2 or min(lambdas) <= 0):
            raise ValueError(f"--lambdas needs at least two positive values, got {args.lambdas!r}")
        settings = TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings)
                                    if f.name not in ("lambdas", "scales")},
                                 lambdas=lambdas or DEFAULT_LAMBDAS, scales=_scales(args.scales))
        started = time.perf_counter()
        logged = train_codec(FeatureShards(args.shards, args.limit), args.out, settings, args.device, args.resume,
                             progress=not args.no_progress, retarget=lambdas if args.resume else None)
    except (ValueError, FpnlinkError, OSError) as exc:
        return _fail("train", exc)
    print(json.dumps({**logged, "checkpoint": str(args.out), "seconds": round(time.perf_counter() - started, 1)}))
    return 0


HALF_PRECISION_PARTS = (".g_a.", ".g_s.")
"""State-dict keys (substrings) ``export --half`` stores in float16: the analysis and synthesis transforms,
most of the bytes. The entropy models, the integer scale network, gains and tables stay as trained."""


def export_checkpoint(checkpoint: Path, out: Path, half: bool = False) -> dict[str, Any]:
    """Copy ``checkpoint`` without the optimiser state; the model part is loaded and checked first.

    Args:
        half: store the :data:`HALF_PRECISION_PARTS` in float16 (17.3 MB -> 10.9 MB for the shipped
            model; the CDF tables stay). The loader widens them back to float32, so encoder and decoder
            still run identical weights; the fingerprint is that of the widened weights.
    """
    from ..shared.codec.learned import load_model

    load_model(checkpoint)
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    blob.pop("train", None)
    if half:
        blob["state_dict"] = {key: value.half() if value.is_floating_point()
                              and any(part in key for part in HALF_PRECISION_PARTS) else value
                              for key, value in blob["state_dict"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out)
    return {"out": str(out), "bytes": out.stat().st_size, "fingerprint": LearnedCodec(out).fingerprint}


def _run_export(args: argparse.Namespace) -> int:
    try:
        summary = export_checkpoint(args.ckpt, args.out, args.half)
    except (ValueError, FpnlinkError, OSError) as exc:
        return _fail("export", exc)
    print(json.dumps(summary, indent=2))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = evaluate_codec(FeatureShards(args.shards, args.limit), args.ckpt, args.out,
                                _floats(args.phis) if args.phis else None, scales=_scales(args.scales))
    except (ValueError, FpnlinkError, OSError) as exc:
        return _fail("eval", exc)
    print(json.dumps({"bd_rate_vs_quant_percent": report["bd_rate_vs_quant_percent"],
                      "rate_monotonic": report["rate_monotonic"], "out": str(args.out)}, indent=2))
    return 0
