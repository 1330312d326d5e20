"""Train the ``synthetic`` reference weights: ``fpnlink train``.

One ResNet50-FPN backbone, one RPN and one box head serve all three tasks, so ONE bitstream feeds
detection, segmentation and keypoints. Training composes torchvision's own parts (never a fork)::

    images ─> transform ─> backbone ─> RPN ─> sampled proposals ─> box head ─> cls + box losses
                                                 ├─ positives (<= mask_rois/img) ─> mask head ─> mask loss
                                                 └─ person positives (<= keypoint_rois/img) ─> keypoint head

The export is an fpnlink bundle (``fpnlink.shared.model.zoo.BUNDLE_FORMAT``) holding standard torchvision
state dicts for ``faster``/``mask``/``keypoint`` with the same ``num_classes`` and identical backbone,
RPN and box weights. Built from scratch (``weights_backbone=None``), torchvision's builders use trainable
``BatchNorm2d`` in the backbone, so its running statistics are exported as they are.

Three modes::

    fpnlink train --data DIR --out CKPT [--iters N | --epochs E] [--resume] ...   # train, then evaluate
    fpnlink train --eval-only --weights CKPT --data DIR                          # COCO AP on val
    fpnlink train --export-asset CKPT --asset-dir shared/model/assets/synthetic  # committed parts
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNN
from torchvision.models.detection.roi_heads import fastrcnn_loss, keypointrcnn_loss, maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign
from tqdm import tqdm

from ..shared.imageio import read_image
from ..shared.model.assets import write_asset
from ..shared.model.zoo import BUNDLE_FORMAT, ModelConfig, load_bundle
from .devices import resolve_device
from .evaluation import ARCH_IOU_TYPE, COCO_KEYPOINT_SIGMAS, coco_ap, coco_results
from .synth import KEYPOINTS, PERSON

BACKGROUND = "__background__"
PRECISIONS = ("fp32", "bf16")
MAX_BAD_STEPS = 20
"""Consecutive non-finite losses (each step skipped) before training gives up."""
_HEAD_PREFIXES = {"mask": "roi_heads.mask_", "keypoint": "roi_heads.keypoint_"}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and sampling settings (all recorded in the checkpoint).

    Args:
        size: network input side (min_size = max_size), e.g. 256 on CPU.
        iters: total optimiser steps (the cosine schedule spans them).
        batch: images per step.
        lr: peak SGD learning rate (momentum 0.9), reached after ``warmup`` steps.
        weight_decay: SGD weight decay.
        warmup: linear warm-up steps.
        clip: gradient-norm clip.
        rpn_pre_nms: RPN proposals kept per level before NMS while training.
        rpn_post_nms: RPN proposals kept after NMS while training.
        box_batch: sampled proposals per image for the box head.
        mask_rois: positives per image fed to the mask head.
        keypoint_rois: person positives per image fed to the keypoint head (it is the costliest head).
        seed: data order and initialisation seed.
        precision: ``"fp32"``, or ``"bf16"`` to run the forward pass under bfloat16 autocast (weights and
            optimiser stay fp32); 1.4x faster per step on a 2-core AVX512-BF16 CPU, measured at 256 px.
    """

    size: int = 256
    iters: int = 12000
    batch: int = 2
    lr: float = 0.01
    weight_decay: float = 1e-4
    warmup: int = 1000
    clip: float = 10.0
    rpn_pre_nms: int = 300
    rpn_post_nms: int = 150
    box_batch: int = 128
    mask_rois: int = 8
    keypoint_rois: int = 2
    seed: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 64 <= self.size <= 2048:
            raise ValueError(f"size must be in [64, 2048], got {self.size}")
        for name in ("iters", "batch", "box_batch", "mask_rois", "keypoint_rois", "rpn_pre_nms", "rpn_post_nms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 1% of the peak at ``iters``."""
        if step < self.warmup:
            return self.lr * (0.001 + 0.999 * step / self.warmup)
        t = min(1.0, (step - self.warmup) / max(1, self.iters - self.warmup))
        return self.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


# ---------------------------------------------------------------------------------------------- data


class CocoSplit:
    """One split of an ``fpnlink data synth`` dataset as (image [3, H, W] in [0, 1], target) pairs.

    Targets carry torchvision's training keys: ``boxes`` [N, 4] xyxy, ``labels`` [N] (= COCO category id),
    ``masks`` [N, H, W] uint8 and ``keypoints`` [N, K, 3] (all zero for non-person instances).
    """

    def __init__(self, root: Path, split: str) -> None:
        ann = Path(root) / "annotations" / f"{split}.json"
        if not ann.is_file():
            raise FileNotFoundError(f"no annotations at {ann}; generate them with `fpnlink data synth --out {root}`")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(ann))
        self.image_dir = Path(root) / "images" / split
        self.ids = sorted(self.coco.getImgIds())
        self.categories = category_names(self.coco)
        self.person_label = self.categories.index(PERSON)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Tensor:
        info = self.coco.imgs[self.ids[index]]
        return read_image(self.image_dir / info["file_name"])

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image_id = self.ids[index]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        h, w = self.coco.imgs[image_id]["height"], self.coco.imgs[image_id]["width"]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = np.zeros((0, h, w), np.uint8)
        if anns:
            masks = np.stack([mask_utils.decode(a["segmentation"]) for a in anns])
        keypoints = torch.zeros((len(anns), len(KEYPOINTS), 3))
        for i, a in enumerate(anns):
            if "keypoints" in a:
                keypoints[i] = torch.tensor(a["keypoints"], dtype=torch.float32).reshape(-1, 3)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "keypoints": keypoints,
        }
        return self.image(index), target


def category_names(coco: COCO) -> list[str]:
    """Label-indexed class names (index 0 = background); COCO ids must be 1..K."""
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
        raise ValueError(f"category ids must be 1..K, got {[c['id'] for c in cats]}")
    if PERSON not in [c["name"] for c in cats]:
        raise ValueError(f"the dataset has no {PERSON!r} category for the keypoint head")
    return [BACKGROUND] + [c["name"] for c in cats]


# ---------------------------------------------------------------------------------------------- model


def build_model(num_classes: int, config: TrainConfig) -> MaskRCNN:
    """A torchvision Mask R-CNN (from scratch, trainable BatchNorm) with a keypoint branch attached.

    The keypoint modules are torchvision's KeypointRCNN defaults, so the exported state dicts load into
    the standard ``*_resnet50_fpn`` builders.
    """
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes,
        min_size=config.size, max_size=config.size,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms, rpn_post_nms_top_n_train=config.rpn_post_nms,
        box_batch_size_per_image=config.box_batch,
    )
    heads = model.roi_heads
    heads.keypoint_roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=14, sampling_ratio=2)
    heads.keypoint_head = KeypointRCNNHeads(model.backbone.out_channels, tuple(512 for _ in range(8)))
    heads.keypoint_predictor = KeypointRCNNPredictor(512, len(KEYPOINTS))
    return model


def _subsample(index: Tensor, limit: int) -> Tensor:
    return index[torch.randperm(len(index), device=index.device)[:limit]] if len(index) > limit else index


def training_losses(
    model: MaskRCNN, images: list[Tensor], targets: list[dict[str, Tensor]], config: TrainConfig, person_label: int
) -> dict[str, Tensor]:
    """All five R-CNN losses from one backbone pass (see the module docstring for the flow)."""
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    proposals, losses = model.rpn(image_list, features, targets)
    heads = model.roi_heads
    proposals, matched, labels, regression_targets = heads.select_training_samples(proposals, targets)
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    losses["loss_classifier"], losses["loss_box_reg"] = fastrcnn_loss(
        class_logits, box_regression, labels, regression_targets)

    def branch(select: list[Tensor], pool: Any, head: Any, predictor: Any) -> tuple[Tensor | None, list, list]:
        rois = [p[i] for p, i in zip(proposals, select)]
        idxs = [m[i] for m, i in zip(matched, select)]
        if sum(len(r) for r in rois) == 0:
            return None, rois, idxs
        return predictor(head(pool(features, rois, image_list.image_sizes))), rois, idxs

    zero = class_logits.sum() * 0
    positives = [_subsample(torch.where(lab > 0)[0], config.mask_rois) for lab in labels]
    logits, rois, idxs = branch(positives, heads.mask_roi_pool, heads.mask_head, heads.mask_predictor)
    losses["loss_mask"] = zero if logits is None else maskrcnn_loss(
        logits, rois, [t["masks"] for t in targets], [t["labels"] for t in targets], idxs)
    persons = [_subsample(torch.where(lab == person_label)[0], config.keypoint_rois) for lab in labels]
    logits, rois, idxs = branch(persons, heads.keypoint_roi_pool, heads.keypoint_head, heads.keypoint_predictor)
    losses["loss_keypoint"] = zero if logits is None else keypointrcnn_loss(
        logits, rois, [t["keypoints"] for t in targets], idxs)
    return losses


# ---------------------------------------------------------------------------------------------- export


def bundle_states(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Split the trainer's state dict into torchvision faster/mask/keypoint state dicts (shared tensors)."""
    def without(*archs: str) -> dict[str, Tensor]:
        prefixes = tuple(_HEAD_PREFIXES[a] for a in archs)
        return {k: v for k, v in state.items() if not k.startswith(prefixes)}

    return {"faster": without("mask", "keypoint"), "mask": without("keypoint"), "keypoint": without("mask")}


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_bundle(model: MaskRCNN, path: Path, categories: list[str], meta: dict[str, Any]) -> None:
    """Write the fpnlink bundle that ``zoo.load_bundle(path)`` reads (atomically)."""
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    meta = {"categories": {arch: list(categories) for arch in ("faster", "mask", "keypoint")},
            "keypoints": list(KEYPOINTS), **meta}
    _atomic_save({"format": BUNDLE_FORMAT, "models": bundle_states(state), "meta": meta}, path)


def state_path(checkpoint: Path) -> Path:
    """Where the full training state (model, optimiser, step) of ``checkpoint`` lives."""
    return checkpoint.with_name(checkpoint.name + ".state.pt")


# ---------------------------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate(
    weights: Path, data: Path, split: str = "val", size: int = 256, max_images: int | None = None,
    device: str = "cpu", detections_per_img: int = 20, progress: bool = True,
) -> dict[str, float]:
    """COCO AP of a bundle on a dataset split: one backbone pass per image feeds all three heads.

    Returns:
        ``{"bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50", "keypoints_AP", "keypoints_AP50", "images"}``.
    """
    dataset = CocoSplit(data, split)
    bundle = load_bundle(str(weights), ModelConfig(min_size=size, max_size=size, detections_per_img=detections_per_img))
    tasks = ["detect", "segment", "keypoints"]
    edge = bundle.edge_half(tasks).to(device)
    clouds = {arch: bundle.cloud_half(arch).to(device) for arch in bundle.archs_for(tasks)}
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    image_ids = dataset.ids[:count]
    results: dict[str, list[dict[str, Any]]] = {ARCH_IOU_TYPE[arch]: [] for arch in clouds}
    for index in tqdm(range(count), desc=f"eval {split}", disable=not progress, mininterval=10):
        image_id = dataset.ids[index]
        features, image_sizes, original_sizes = edge([dataset.image(index).to(device)])
        for arch, cloud in clouds.items():
            out = {k: v.cpu() for k, v in cloud(features, image_sizes, original_sizes)[0].items()}
            results[ARCH_IOU_TYPE[arch]].extend(coco_results(arch, out, image_id, dataset.person_label))
    metrics: dict[str, float] = {"images": float(count)}
    for iou_type, dets in results.items():
        cat_ids = [dataset.person_label] if iou_type == "keypoints" else None
        ap, ap50 = coco_ap(dataset.coco, dets, iou_type, image_ids, cat_ids, COCO_KEYPOINT_SIGMAS)
        metrics[f"{iou_type}_AP"], metrics[f"{iou_type}_AP50"] = ap or 0.0, ap50 or 0.0
    return metrics


# ---------------------------------------------------------------------------------------------- training


def _batch_order(n: int, step: int, batch: int, seed: int) -> list[int]:
    """Indices of step ``step``: a fresh permutation per epoch, so a resumed run sees the same order."""
    per_epoch = max(1, n // batch)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return perm[pos * batch:(pos + 1) * batch].tolist()


class StepBatches(torch.utils.data.Sampler[list[int]]):
    """The batches of steps ``start .. stop - 1`` (see :func:`_batch_order`), for a ``DataLoader``."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        return (_batch_order(self.n, step, self.batch, self.seed) for step in range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _as_list(items: list[Any]) -> list[Any]:
    """``collate_fn`` keeping (image, target) pairs as a list: detection images differ in size."""
    return items


def default_workers(device: torch.device) -> int:
    """Data-loading processes: none on CPU (they would take cores from the model), up to 8 beside a GPU."""
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


def train(
    data: Path, out: Path, config: TrainConfig, device: str = "auto", resume: bool = False,
    checkpoint_every_min: float = 10.0, log_every: int = 20, progress: bool = True, workers: int | None = None,
) -> dict[str, Any]:
    """Train, writing ``out`` (bundle) and ``state_path(out)`` (full state) every ``checkpoint_every_min``.

    ``workers`` data-loading processes decode the next batches while the model trains
    (default :func:`default_workers`); the batch order is the same with any count.

    Returns:
        ``{"iterations": int, "seconds_per_iter": float, "last_losses": {name: float}}``.
    """
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    dev = resolve_device(device)
    dataset = CocoSplit(data, "train")
    if len(dataset) < config.batch:
        raise ValueError(f"{len(dataset)} training images is fewer than --batch {config.batch}")
    torch.manual_seed(config.seed)
    model = build_model(len(dataset.categories), config).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    step = 0
    if resume:
        step = _load_state(state_path(out), model, optimizer, config)
        print(f"resumed from {state_path(out)} at iteration {step}", flush=True)
    meta = {"train": {**asdict(config), "data": str(data)}}
    model.train()
    started, last_save, window = time.time(), time.time(), time.time()
    start_step, window_step, saved_step, losses, bad_steps = step, step, step, {}, 0
    bar = tqdm(total=config.iters, initial=step, desc="train", disable=not progress, mininterval=10)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(len(dataset), config.batch, config.seed, step, config.iters),
        num_workers=default_workers(dev) if workers is None else workers, collate_fn=_as_list,
        pin_memory=dev.type == "cuda")
    for items in loader:
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        images = [img.to(dev) for img, _ in items]
        targets = [{k: v.to(dev) for k, v in t.items()} for _, t in items]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            loss_dict = training_losses(model, images, targets, config, dataset.person_label)
        loss = sum(loss_dict.values())
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            bad_steps += 1
            tqdm.write(f"it {step}: non-finite loss {_floats(loss_dict)}, step skipped", file=sys.stdout)
            if bad_steps >= MAX_BAD_STEPS:
                raise FloatingPointError(f"{bad_steps} non-finite losses in a row at iteration {step}; lower --lr")
            step += 1
            continue
        bad_steps = 0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip)
        optimizer.step()
        step += 1
        bar.update(1)
        losses = _floats(loss_dict)
        if step % log_every == 0 or step == config.iters:
            rate = (time.time() - window) / max(1, step - window_step)
            window, window_step = time.time(), step
            tqdm.write(f"it {step} lr {config.lr_at(step):.5f} loss {float(loss.detach()):.4f} "
                       f"{json.dumps(losses)} {rate:.2f}s/it", file=sys.stdout)
            sys.stdout.flush()
        if time.time() - last_save >= checkpoint_every_min * 60 or step == config.iters:
            _save(model, optimizer, step, config, out, dataset.categories, meta)
            last_save, saved_step = time.time(), step
            tqdm.write(f"checkpoint {out} at iteration {step}", file=sys.stdout)
    if saved_step != step:  # the last steps were skipped as non-finite
        _save(model, optimizer, step, config, out, dataset.categories, meta)
    bar.close()
    spent = (time.time() - started) / max(1, step - start_step)
    return {"iterations": step, "seconds_per_iter": spent, "last_losses": losses}


def _floats(losses: dict[str, Tensor]) -> dict[str, float]:
    return {k: round(float(v.detach()), 4) for k, v in losses.items()}


def _save(model: MaskRCNN, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig, out: Path,
          categories: list[str], meta: dict[str, Any]) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": step,
             "config": asdict(config), "categories": categories}
    _atomic_save(state, state_path(out))
    export_bundle(model, out, categories, {**meta, "iteration": step})


def _load_state(path: Path, model: MaskRCNN, optimizer: torch.optim.Optimizer, config: TrainConfig) -> int:
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no training state at {path}; start without --resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state["config"]["size"] != config.size:
        raise ValueError(f"--resume: state was trained at size {state['config']['size']}, not {config.size}")
    return int(state["iteration"])


# ---------------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fpnlink train``."""
    p = subparsers.add_parser("train", help="train / evaluate / export the synthetic reference weights")
    p.add_argument("--data", type=Path, help="dataset folder written by `fpnlink data synth`")
    p.add_argument("--out", type=Path, help="bundle checkpoint to write (full state goes to OUT.state.pt)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, help=f"optimiser steps (default {TrainConfig.iters})")
    length.add_argument("--epochs", type=float, help="passes over the training split (sets --iters)")
    p.add_argument("--batch", type=int, default=TrainConfig.batch, help="images per step")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak SGD learning rate (cosine decay)")
    p.add_argument("--warmup", type=int, default=TrainConfig.warmup, help="linear warm-up steps")
    p.add_argument("--size", type=int, default=TrainConfig.size, help="network input side (default 256)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="data order and initialisation seed")
    p.add_argument("--precision", choices=PRECISIONS, default=TrainConfig.precision,
                   help="bf16: bfloat16 autocast for the forward pass (faster on CPUs with AVX512-BF16 and on GPUs)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--workers", type=int, help="data-loading processes (default: 0 on CPU, up to 8 with CUDA)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    p.add_argument("--checkpoint-every-min", type=float, default=10.0, help="minutes between checkpoints")
    p.add_argument("--eval-images", type=int, default=100, help="val images in the final evaluation")
    p.add_argument("--eval-only", action="store_true", help="only evaluate --weights on --data")
    p.add_argument("--weights", type=Path, help="bundle path (or `synthetic`) to evaluate with --eval-only")
    p.add_argument("--export-asset", type=Path, metavar="CKPT", help="write CKPT as committed int8 asset parts")
    p.add_argument("--asset-dir", type=Path, default=Path("shared/model/assets/synthetic"),
                   help="where --export-asset writes the parts and manifest")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.export_asset:
            print(json.dumps(write_asset(args.export_asset, args.asset_dir), indent=2))
            return 0
        if args.data is None:
            raise ValueError("--data is required (a folder written by `fpnlink data synth`)")
        if args.eval_only:
            if args.weights is None:
                raise ValueError("--eval-only needs --weights CKPT")
            weights = args.weights
        else:
            if args.out is None:
                raise ValueError("--out CKPT is required to train")
            iters = args.iters or TrainConfig.iters
            if args.epochs:
                iters = math.ceil(args.epochs * len(CocoSplit(args.data, "train")) / args.batch)
            config = TrainConfig(size=args.size, iters=iters, batch=args.batch, lr=args.lr,
                                 warmup=args.warmup, seed=args.seed, precision=args.precision)
            print(json.dumps(train(args.data, args.out, config, args.device, args.resume,
                                   args.checkpoint_every_min, workers=args.workers)), flush=True)
            weights = args.out
        device = str(resolve_device(args.device))
        metrics = evaluate(weights, args.data, "val", args.size, args.eval_images, device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fpnlink train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"eval": metrics}), flush=True)
    return 0
