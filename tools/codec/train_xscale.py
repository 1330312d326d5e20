"""Training of the cross-scale codec (:mod:`fpnlink.shared.codec.crossscale`): ``fpnlink codec train-xscale``.

Each step takes aligned crops of all four scales, draws ``phi`` and the starve level per scale and item,
and minimises ``sum_s (R_s + lambda(phi_s) * D_s) / sqrt(lambda(phi_s))`` (R in bits per position of the
scale; the ``sqrt`` weighting as in :mod:`.train`) with a task-aware distortion.

Distortion per scale (normalised domain, ``e = x_hat_norm - x_norm``)::

    D = (1 - w) * mean(e^2) + w * mean_pos |A_s e|^2 / |A_s|_F^2

``A_s = Lambda^(1/2) V^T diag(std_s)`` where ``V Lambda V^T`` is the mean trace-normalised channel Gram
matrix of every cloud layer that reads the FPN maps (the RPN head's 3x3 conv, the box head's fc6 over
its 7x7 ROI grid, the first mask and keypoint head convs). ``|A_s e|^2`` is the energy of the error in
what those layers compute, up to their spatial mixing: it is the heads' first-order sensitivity,
computed once from the frozen weights, at the cost of one 1x1 convolution. Both terms equal 1 for an
isotropic error of the features' own size, so ``w`` trades them directly.

What the task term adds, measured against ``--task-weight 0`` (plain feature MSE), same recipe otherwise, both
stopped at step 2,200 (16 val images, box AP through the faster heads, uniform phi, both in one run): BD-rate
against JPEG -13.0% with the term (w = 0.8), -17.2% without; without against with -5.8%, within what 16 images
resolve (the plain-MSE curve is not monotone at its top level: 0.581 -> 0.563). So at equal early steps the
term does not pay; whether it does at the shipped 12,000 steps is not measured. The distillation through the
heads' outputs is not measured either: it costs a head pass per training crop, far beyond this CPU budget.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...shared.codec.crossscale import CrossScaleConfig, CrossScaleHyperprior
from ...shared.codec.gain import GainUnits
from ...shared.codec.learned import load_model
from ...shared.model import TRANSMITTED_SCALES, ModelBundle, ModelConfig, load_bundle
from .shards import FeatureShards
from .train import lambda_for, save_checkpoint

ALIGN = 8
"""P2 crop positions are multiples of this, so the crop lines up on P5 (stride 8 on P2's grid)."""
GAIN_BASE, GAIN_SPAN = 0.02, 80.0
"""Initial gains of a new model: level 0 quantises 50x more coarsely than unit gain, the top level ~1.6x more
finely. Warm-started gains (span 5x) left the lowest level at 2.3 bpp; gains learn too slowly to move 10x."""
INITIAL_SCALE_INDEX = 12
"""Scale-table index (sigma 0.48) the integer scale network of a new model starts at; at the table's middle
(sigma 5.6) a new PCA-initialised model spent ~120 bits per P2 position on mostly-zero latents."""
LR_SCALES = {".h_s.layers.2.bias": 300.0, ".h_s.": 3.0}
"""Learning rates relative to ``lr`` by parameter-name part (the first match counts). The integer scale
network's weights are multiples of 1/64: at ``lr`` alone they rarely cross a rounding step; 30x diverged within
600 steps, and so did 10x on the gains (their log-domain steps outran the inverse gains). Its output bias is in
scale-table steps: at 3x it moved about one step per 1,000 steps, and latents that quantise to zero kept
costing ~50 bits per P2 position while the distortion grew."""


FPN_READERS = {
    "rpn.head.conv.0.0.weight": None, "roi_heads.box_head.fc6.weight": 256,
    "roi_heads.mask_head.0.0.weight": None, "roi_heads.keypoint_head.0.weight": None,
}
"""Parameters of the cloud layers that read the FPN maps -> input channels when the weight is flat (fc6)."""


def head_sensitivity(bundle: ModelBundle) -> Tensor:
    """``[C, C]`` mean trace-normalised Gram matrix of the :data:`FPN_READERS` of every model in ``bundle``."""
    grams = []
    for model in bundle.models.values():
        params = dict(model.named_parameters())
        for name, channels in FPN_READERS.items():
            if name not in params:
                continue
            weight = params[name].detach().double()
            weight = weight.view(weight.shape[0], channels, -1) if channels else weight.flatten(2)
            gram = torch.einsum("oik,ojk->ij", weight, weight)
            grams.append(gram / gram.trace())
    return torch.stack(grams).mean(0).float()


def task_projections(gram: Tensor, std: Tensor) -> Tensor:
    """``[S, C, C]`` the matrices ``A_s`` of the module docstring, each scaled to unit Frobenius norm."""
    values, vectors = torch.linalg.eigh(gram.double())
    root = values.clamp_min(0).sqrt()[:, None] * vectors.T
    projections = root[None] * std.double()[:, None, :]
    return (projections / projections.flatten(1).norm(dim=1)[:, None, None]).float()


@dataclass
class XScaleSettings:
    """What shapes a cross-scale training run; stored in the checkpoint.

    Args:
        steps: total optimiser steps (a resumed run continues up to this count).
        batch: items per step (each gives one aligned crop of every scale).
        lr: Adam learning rate (divided by 10 for the last 10% of the steps).
        crop: P2 crop side in positions, a multiple of 8 (P3..P5 crops are 1/2, 1/4, 1/8 of it).
        lambdas: distortion weight per gain level (its length sets ``N``).
        task_weight: ``w`` of the module docstring (0: plain feature MSE).
        starve: probability that a scale is dropped to its starve level.
        save_every: steps between checkpoints.
        max_minutes: wall-clock budget of this invocation (stops early, saving); none when 0.
        stop_at: stop (saving) at this step while keeping the schedule of ``steps``, so that an ablation
            matches another run at equal steps; none when 0.
        seed: sampling seed.
        latent, hyper, hidden, decoder: architecture sizes (see ``CrossScaleConfig``).
        context: the cross-scale decoder path (False: the ablation without it).
        hyper_gains: scale the hyper-latent per level (``HyperGains``).
        decoder_only: train the synthesis side alone (:meth:`CrossScaleHyperprior.synthesis_parameters`), so
            that a fine-tuned codec writes the same bitstreams and rate models fitted on it stay true.
    """

    steps: int = 6000
    batch: int = 12
    lr: float = 3e-4
    crop: int = 32
    lambdas: tuple[float, ...] = (0.1, 0.5, 2.5, 12.0, 60.0)
    task_weight: float = 0.8
    starve: float = 0.15
    save_every: int = 100
    max_minutes: float = 0.0
    stop_at: int = 0
    seed: int = 0
    latent: int = 96
    hyper: int = 48
    hidden: int = 48
    decoder: int = 64
    context: bool = True
    hyper_gains: bool = True
    decoder_only: bool = False


def _append_log(log: Path, entry: dict[str, Any]) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def pca_bases(shards: FeatureShards, mean: Tensor, std: Tensor, components: int, items: int = 200) -> Tensor:
    """``[4, C, components]`` top principal directions of each scale's normalised features (first ``items``)."""
    bases = []
    for scale, name in enumerate(TRANSMITTED_SCALES):
        values = torch.cat([t.float().flatten(1) for t in shards.features[name][:items]], dim=1)
        values = (values - mean[scale][:, None]) / std[scale][:, None]
        _, vectors = torch.linalg.eigh(values @ values.T / values.shape[1])
        bases.append(vectors[:, -components:].flip(-1))
    return torch.stack(bases)


def aligned_crops(maps: dict[str, list[Tensor]], batch: int, crop: int, generator: torch.Generator,
                  ) -> list[Tensor]:
    """Random items, one P2 window of ``crop`` (a multiple of 8) and the same window on P3..P5."""
    count = len(maps["0"])
    picks = torch.randint(count, (batch,), generator=generator).tolist()
    out: list[list[Tensor]] = [[] for _ in TRANSMITTED_SCALES]
    for i in picks:
        height, width = maps["0"][i].shape[-2:]
        top = int(torch.randint((height - crop) // ALIGN + 1, (1,), generator=generator)) * ALIGN
        left = int(torch.randint((width - crop) // ALIGN + 1, (1,), generator=generator)) * ALIGN
        for s, name in enumerate(TRANSMITTED_SCALES):
            t, l, c = top >> s, left >> s, crop >> s
            out[s].append(maps[name][i][:, t:t + c, l:l + c].float())
    return [torch.stack(x) for x in out]


def train_xscale(shards: FeatureShards, out: Path, settings: XScaleSettings, resume: bool = False,
                 warm_start: Path | None = None, progress: bool = True, pca_init: bool = False,
                 retarget: tuple[float, ...] | None = None, fine_tune: Path | None = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) a cross-scale model; appends its logged means to ``out``.log.

    Args:
        warm_start: a ``learned`` checkpoint whose matching tensors (analysis, hyperprior, gains) start a
            new model.
        pca_init: start a new model's transforms as a PCA coder (``CrossScaleHyperprior.init_from_pca``).
        retarget: on resume, new distortion weights for the stored gain levels (as many).
        fine_tune: an exported ``xscale`` codec (e.g. the shipped one) whose every tensor, gains and
            architecture included, starts a new run; the way on when a run's training state is gone.
    """
    from tqdm import tqdm

    if settings.crop % ALIGN:
        raise ValueError(f"crop must be a multiple of {ALIGN}, got {settings.crop}")
    if fine_tune is not None and (warm_start is not None or pca_init):
        raise ValueError("--fine-tune starts from a whole codec; it does not combine with --warm-start or --pca-init")
    if settings.decoder_only and fine_tune is None and not (resume and out.is_file()):
        raise ValueError("--decoder-only trains the synthesis of an existing codec: give --fine-tune CODEC")
    log = out.with_suffix(".log")
    generator = torch.Generator().manual_seed(settings.seed)
    start, state = 0, None
    if resume and out.is_file():
        blob = torch.load(out, map_location="cpu", weights_only=True)
        model = CrossScaleHyperprior.from_checkpoint(blob)
        state = blob["train"]
        stored = {k: tuple(v) if isinstance(v, list) else v for k, v in state["settings"].items()}
        lambdas = retarget if retarget is not None else stored["lambdas"]
        if len(lambdas) != len(stored["lambdas"]):
            raise ValueError(f"--lambdas: the checkpoint has {len(stored['lambdas'])} gain levels, got {len(lambdas)}")
        settings = XScaleSettings(**{**stored, "steps": settings.steps, "max_minutes": settings.max_minutes,
                                     "stop_at": settings.stop_at, "save_every": settings.save_every,
                                     "lambdas": tuple(lambdas)})
        start = int(state["step"])
        generator.set_state(state["generator"])
    elif fine_tune is not None:
        model = load_model(fine_tune, model_class=CrossScaleHyperprior)
        config = model.config
        if len(settings.lambdas) != config.num_gains:
            raise ValueError(f"--lambdas: {fine_tune} has {config.num_gains} gain levels, got {len(settings.lambdas)}")
        settings = replace(settings, latent=config.latent, hyper=config.hyper, hidden=config.hidden,
                           decoder=config.decoder, context=config.context, hyper_gains=config.hyper_gains)
        _append_log(log, {"fine_tune": str(fine_tune), "decoder_only": settings.decoder_only})
    else:
        config = CrossScaleConfig(latent=settings.latent, hyper=settings.hyper, hidden=settings.hidden,
                                  num_gains=len(settings.lambdas), decoder=settings.decoder,
                                  context=settings.context, hyper_gains=settings.hyper_gains)
        model = CrossScaleHyperprior(config)
        model.set_normalisation(*shards.normalisation())
        model.gains = GainUnits(config.num_scales, config.num_gains, config.latent, span=GAIN_SPAN, base=GAIN_BASE)
        if pca_init:
            model.init_from_pca(pca_bases(shards, model.feature_mean, model.feature_std, config.latent // 4))
        for branch in model.branches:
            torch.nn.init.constant_(branch.h_s.layers[-1].bias, INITIAL_SCALE_INDEX)
        if warm_start is not None:
            copied = model.warm_start(load_model(warm_start), skip=("gains.",))
            _append_log(log, {"warm_start": str(warm_start), "tensors": len(copied)})
    model.train()
    trained = model.synthesis_parameters() if settings.decoder_only else list(model.named_parameters())
    model.requires_grad_(False)
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, param in trained:
        if not name.endswith("quantiles"):
            param.requires_grad_(True)
            scale = next((v for part, v in LR_SCALES.items() if part in f".{name}"), 1.0)
            groups.setdefault(scale, []).append(param)
    optimizer = torch.optim.Adam([{"params": params, "scale": scale} for scale, params in sorted(groups.items())],
                                 lr=settings.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    manifest = shards.manifest
    bundle = load_bundle(manifest["weights"], ModelConfig(min_size=manifest["min_size"],
                                                          max_size=manifest["max_size"]),
                         archs=("faster", "mask", "keypoint"))
    projections = task_projections(head_sensitivity(bundle), model.feature_std)
    high = float(len(settings.lambdas) - 1)
    meta = {"backbone_fingerprint": manifest.get("backbone_fingerprint"),
            "backbone_weights": bundle.backbone_weight_fingerprints["faster"], "weights": manifest.get("weights"),
            "items": len(shards), "min_size": manifest.get("min_size"), "max_size": manifest.get("max_size")}
    bar = tqdm(range(start, settings.steps), desc="train-xscale", disable=not progress, initial=start,
               total=settings.steps, mininterval=5)
    started = time.monotonic()
    budget = settings.max_minutes * 60
    logged: dict[str, Any] = {}
    sums = torch.zeros(3, 4)
    for step in bar:
        late = step >= 0.9 * settings.steps
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * group["scale"] * (0.1 if late else 1.0)
        crops = aligned_crops(shards.features, settings.batch, settings.crop, generator)
        phi = torch.rand(settings.batch, 4, generator=generator) * high
        starve = torch.rand(settings.batch, 4, generator=generator) < settings.starve
        result = model.forward_frame(crops, phi, starve)
        loss = torch.zeros(())
        for s in range(4):
            error = result["x_hat_norm"][s] - result["x_norm"][s]
            mse = error.pow(2).mean(dim=(1, 2, 3))
            task = torch.nn.functional.conv2d(error, projections[s][:, :, None, None]).pow(2).sum(1).mean(dim=(1, 2))
            distortion = (1 - settings.task_weight) * mse + settings.task_weight * task
            rate = result["bits"][s] / (crops[s].shape[-2] * crops[s].shape[-1])
            weight = lambda_for(phi[:, s], settings.lambdas)
            loss = loss + ((rate + weight * distortion) / weight.sqrt()).mean()
            sums[:, s] += torch.stack((rate.mean(), mse.mean(), task.mean())).detach()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3g}")
        out_of_time = (budget > 0 and time.monotonic() - started >= budget) or step + 1 == settings.stop_at
        if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps or out_of_time:
            means = sums / settings.save_every
            logged = {"step": step + 1, "loss": loss.item(), "bits_per_position": means[0].tolist(),
                      "mse": means[1].tolist(), "task": means[2].tolist(),
                      "minutes": (time.monotonic() - started) / 60}
            sums.zero_()
            _append_log(log, logged)
            save_checkpoint(model, optimizer, settings, step + 1, generator, meta, out)
        if out_of_time:
            break
    bar.close()
    return logged
