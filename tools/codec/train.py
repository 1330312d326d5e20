"""Training of the variable-rate model: ``fpnlink codec train``.

``L = R + lambda(phi) * D``, ``phi ~ U[0, N-1]`` per item, lambda log-interpolated between the per-gain
values; R in bits per feature-map position, D = MSE of the normalised features. Each item's L is divided
by ``sqrt(lambda)``, which leaves its optimum where it was but lets every rate level pull comparably on
the shared transforms: unweighted, the largest lambda's items dominate the gradient and the low-phi gains
barely train (measured on synthetic-backbone features, lambda 0.5..2048: after 11k steps phi 0 still
spent 4.2 bits per input pixel on P2).

Shared or per-scale transforms: ``--scales 0`` trains on P2 alone; the measurement that chose per-scale
transforms is in ``fpnlink.shared.codec.hyperprior``'s docstring. ``--shared`` trains one set of
transforms for all scales.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...shared.codec.learned import SCALE_INDEX
from ...shared.model import TRANSMITTED_SCALES
from ..devices import resolve_device
from .shards import FeatureShards

DEFAULT_LAMBDAS = (8.0, 32.0, 128.0, 512.0, 2048.0, 8192.0)
"""Distortion weight per gain level (``N = 6``), in bits per position per unit normalised MSE."""


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


def lambda_for(phi: Tensor, lambdas: tuple[float, ...]) -> Tensor:
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

    from ...shared.codec.hyperprior import FeatureHyperprior, HyperpriorConfig

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
            "backbone_weights": shards.manifest.get("backbone_weights"),
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
        weight = lambda_for(phi, settings.lambdas)
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
            save_checkpoint(model, optimizer, settings, step + 1, generator, meta, out)
        if out_of_time:
            break
    bar.close()
    if start >= settings.steps and not out.is_file():
        save_checkpoint(model, optimizer, settings, start, generator, meta, out)
    return logged


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, settings: Any, step: int,
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
