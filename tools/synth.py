"""A deterministic synthetic world for training and evaluating the detectors: ``fpnlink data synth``.

Each scene is a cluttered, textured background with a handful of objects drawn back to front::

    background (gradient + low-frequency noise + stripes + pixel noise + distractor blobs)
      └─> objects, each one: exact mask (PIL ImageDraw) -> texture -> paste -> instance-id map
            └─> annotations from the id map: the VISIBLE part of each object after occlusion

Classes: five shapes (disc, square, triangle, star, ring) and an articulated ``person`` drawn from 17
keypoints in COCO order, with thick limbs so it has a real mask. Keypoint visibility follows COCO:
2 visible, 1 covered by a later object, 0 outside the image (then x = y = 0).

The dataset is written in COCO format::

    DIR/images/{train,val,test}/000001.png
    DIR/annotations/{train,val,test}.json

Same seed, same arguments -> identical bytes (scene ``i`` draws from ``numpy.random.default_rng([seed, i])``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "star", "ring")
PERSON = "person"
CATEGORIES: tuple[str, ...] = (*SHAPES, PERSON)
"""Category names; the COCO category id (and model label) of ``CATEGORIES[i]`` is ``i + 1``."""
KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
"""COCO's person skeleton (1-based keypoint indices)."""
SPLITS: tuple[str, ...] = ("train", "val", "test")

MIN_OBJECT_PX = 10
"""Smallest object extent in pixels; the largest is ``MAX_OBJECT_FRACTION`` of the image side."""
MAX_OBJECT_FRACTION = 0.55
OBJECTS_PER_SCENE = (3, 9)
PERSON_PROBABILITY = 0.3
MIN_VISIBLE_FRACTION = 0.4
"""An object is only placed if every earlier object keeps at least this fraction of its pixels."""
MIN_VISIBLE_PX = 12
PLACEMENT_TRIES = 6


# ---------------------------------------------------------------------------------------------- background


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a ``cells`` x ``cells`` random grid upsampled bicubically."""
    grid = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    mode = "RGB" if channels == 3 else "L"
    up = Image.fromarray(grid if channels == 3 else grid[..., 0], mode).resize((size, size), Image.BICUBIC)
    out = np.asarray(up, dtype=np.float32) / 255.0
    return out if channels == 3 else out[..., None]


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sinusoidal stripes in [-1, 1] along a random direction, shape [size, size, 1]."""
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(4, size / 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
    return np.sin(phase)[..., None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured clutter, float32 [size, size, 3] in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    img = img * 0.5 + _smooth_noise(rng, size, int(rng.integers(3, 12)), 3) * 0.5
    img += _stripes(rng, size) * rng.uniform(0, 0.15) * (rng.random(3).astype(np.float32) - 0.5)
    canvas = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(-0.1, 1.1, 2) * size
        if rng.random() < 0.5:  # elongated ellipse: never a disc
            rx = rng.uniform(0.02, 0.2) * size
            ry = rx * rng.uniform(0.1, 0.4)
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
        else:  # scribble
            points = [(float(px), float(py)) for px, py in (rng.normal(0, 0.1, (4, 2)) * size + (x, y))]
            draw.line(points, fill=colour, width=int(rng.integers(1, 4)))
    out = np.asarray(canvas, dtype=np.float32) / 255.0
    return out + rng.normal(0, rng.uniform(0.01, 0.06), out.shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------- objects


def _polygon(center: np.ndarray, radii: np.ndarray, angles: np.ndarray) -> list[tuple[float, float]]:
    xs = center[0] + radii * np.cos(angles)
    ys = center[1] + radii * np.sin(angles)
    return [(float(x), float(y)) for x, y in zip(xs, ys)]


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, name: str, center: np.ndarray, r: float) -> None:
    """Draw shape ``name`` of circumradius ``r`` filled with 255 (its exact mask)."""
    rot = rng.uniform(0, 2 * math.pi)
    x, y = float(center[0]), float(center[1])
    if name == "disc":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    elif name == "ring":
        draw.ellipse([x - r, y - r, x + r, y + r], outline=255, width=max(2, int(r * rng.uniform(0.25, 0.5))))
    elif name == "square":
        draw.polygon(_polygon(center, np.full(4, r), rot + np.arange(4) * math.pi / 2), fill=255)
    elif name == "triangle":
        draw.polygon(_polygon(center, np.full(3, r), rot + np.arange(3) * 2 * math.pi / 3), fill=255)
    elif name == "star":
        radii = np.tile([r, r * rng.uniform(0.35, 0.55)], 5)
        draw.polygon(_polygon(center, radii, rot + np.arange(10) * math.pi / 5), fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}; expected one of {SHAPES}")


def _person_pose(rng: np.random.Generator, center: np.ndarray, height: float) -> np.ndarray:
    """17 keypoints [17, 2] (COCO order) of a random pose, ``height`` from head top to ankles."""
    up = rng.uniform(-0.35, 0.35) - math.pi / 2  # torso direction (image y points down)
    u = np.array([math.cos(up), math.sin(up)])  # hips -> shoulders
    side = np.array([-u[1], u[0]])  # person's left, on the image's right (facing the camera)
    torso, limb, half_w = 0.3 * height, 0.14 * height, 0.09 * height
    hip_c = center - u * 0.05 * height
    sh_c = hip_c + u * torso
    head = sh_c + u * 0.12 * height
    kp = np.zeros((17, 2))

    def bend(start: np.ndarray, base: float, spread: float) -> tuple[np.ndarray, np.ndarray]:
        a1 = base + rng.uniform(-spread, spread)
        a2 = a1 + rng.uniform(-spread, spread) * 0.8
        mid = start + limb * np.array([math.cos(a1), math.sin(a1)])
        return mid, mid + limb * np.array([math.cos(a2), math.sin(a2)])

    down = up + math.pi
    face = side * rng.uniform(-0.4, 0.4) * 0.05 * height
    kp[0] = head + face
    kp[1], kp[2] = head + side * 0.025 * height + u * 0.025 * height, head - side * 0.025 * height + u * 0.025 * height
    kp[3], kp[4] = head + side * 0.05 * height, head - side * 0.05 * height
    for i, sign in ((5, 1), (6, -1)):  # shoulders, then elbows/wrists; arms hang with a random swing
        kp[i] = sh_c + sign * side * half_w * 1.2
        kp[i + 2], kp[i + 4] = bend(kp[i], down + sign * rng.uniform(-0.3, 1.6), 0.9)
    for i, sign in ((11, 1), (12, -1)):  # hips, knees, ankles
        kp[i] = hip_c + sign * side * half_w * 0.8
        kp[i + 2], kp[i + 4] = bend(kp[i], down + sign * rng.uniform(-0.1, 0.5), 0.35)
    return kp


def _draw_person(draw: ImageDraw.ImageDraw, kp: np.ndarray, height: float) -> None:
    """Thick limbs, a torso polygon and a head disc: every keypoint lies inside the mask."""
    width = max(2, int(round(0.075 * height)))
    pts = [(float(x), float(y)) for x, y in kp]
    draw.polygon([pts[5], pts[6], pts[12], pts[11]], fill=255)
    for a, b in ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16)):
        draw.line([pts[a], pts[b]], fill=255, width=width)
    for x, y in pts[5:]:
        r = width / 2
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    head_c = (kp[3] + kp[4]) / 2
    hr = max(2.0, float(np.linalg.norm(kp[3] - kp[4])) * 0.5 + 0.02 * height)
    draw.ellipse([head_c[0] - hr, head_c[1] - hr, head_c[0] + hr, head_c[1] + hr], fill=255)
    neck = (kp[5] + kp[6]) / 2
    draw.line([(float(neck[0]), float(neck[1])), (float(head_c[0]), float(head_c[1]))], fill=255, width=width)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An object surface, float32 [h, w, 3]: flat, noisy, striped, checkered or graded."""
    base = rng.random(3).astype(np.float32)
    kind = int(rng.integers(0, 5))
    if kind == 0:
        return np.broadcast_to(base, (h, w, 3))
    if kind == 1:
        return base + rng.normal(0, 0.08, (h, w, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    other = rng.random(3).astype(np.float32)
    if kind == 2:
        period = rng.uniform(3, 12)
        t = (np.sin((xx + yy * rng.uniform(-1, 1)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif kind == 3:
        cell = int(rng.integers(2, 8))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:
        t = yy / max(h - 1, 1)
    t = t[..., None] * rng.uniform(0.3, 1.0)
    return base * (1 - t) + other * t


def _object_mask(rng: np.random.Generator, size: int, category: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-image boolean mask of one new object, plus its keypoints [17, 2] for a person."""
    extent = math.exp(rng.uniform(math.log(MIN_OBJECT_PX), math.log(MAX_OBJECT_FRACTION * size)))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    keypoints = None
    if category == PERSON:
        height = max(extent, 2.0 * MIN_OBJECT_PX) * 1.5
        center = rng.uniform(-0.05, 1.05, 2) * size
        keypoints = _person_pose(rng, center, height)
        _draw_person(draw, keypoints, height)
    else:
        center = rng.uniform(0.0, 1.0, 2) * size
        _draw_shape(draw, rng, category, center, extent / 2)
    return np.asarray(canvas) > 0, keypoints


# ---------------------------------------------------------------------------------------------- scenes


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render one scene.

    Args:
        rng: the scene's random generator (all randomness comes from it).
        size: image side in pixels (square images).

    Returns:
        ``(image, instances)``: image uint8 [size, size, 3]; one dict per visible object, back to front,
        with ``category`` (name), ``category_id`` (1-based, index into :data:`CATEGORIES` + 1),
        ``mask`` (bool [size, size], the visible part), ``bbox`` ([x, y, w, h] of the visible part),
        ``area`` (visible pixels) and, for persons, ``keypoints`` (float [17, 3]: x, y, visibility).
    """
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    image = _background(rng, size)
    ids = np.zeros((size, size), dtype=np.int32)  # 0 = background, k = k-th placed object
    placed: list[tuple[str, int, np.ndarray | None]] = []  # category, full area, keypoints
    for _ in range(int(rng.integers(OBJECTS_PER_SCENE[0], OBJECTS_PER_SCENE[1] + 1))):
        category = PERSON if rng.random() < PERSON_PROBABILITY else SHAPES[int(rng.integers(len(SHAPES)))]
        for _ in range(PLACEMENT_TRIES):
            mask, keypoints = _object_mask(rng, size, category)
            if mask.sum() < MIN_VISIBLE_PX:
                continue
            lost = np.bincount(ids[mask], minlength=len(placed) + 1)[1:]
            kept = np.bincount(ids.ravel(), minlength=len(placed) + 1)[1:] - lost
            if all(k >= MIN_VISIBLE_FRACTION * full for k, (_, full, _) in zip(kept, placed)):
                break
        else:
            continue
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = mask[y0:y1, x0:x1]
        image[y0:y1, x0:x1][crop] = _texture(rng, y1 - y0, x1 - x0)[crop]
        placed.append((category, int(mask.sum()), keypoints))
        ids[mask] = len(placed)
    image_u8 = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return image_u8, _instances(ids, placed, size)


def _instances(ids: np.ndarray, placed: list[tuple[str, int, np.ndarray | None]], size: int) -> list[dict[str, Any]]:
    instances = []
    for k, (category, _, keypoints) in enumerate(placed, start=1):
        visible = ids == k
        area = int(visible.sum())
        if area < MIN_VISIBLE_PX:
            continue
        ys, xs = np.nonzero(visible)
        x0, y0 = int(xs.min()), int(ys.min())
        inst: dict[str, Any] = {
            "category": category,
            "category_id": CATEGORIES.index(category) + 1,
            "mask": visible,
            "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
            "area": area,
        }
        if keypoints is not None:
            inst["keypoints"] = _keypoint_visibility(ids, k, keypoints, size)
        instances.append(inst)
    return instances


def _keypoint_visibility(ids: np.ndarray, k: int, keypoints: np.ndarray, size: int) -> np.ndarray:
    """[17, 3] x, y, v: v=0 outside the image (x=y=0), 1 covered by a later object, 2 visible."""
    out = np.zeros((len(keypoints), 3), dtype=np.float32)
    for j, (x, y) in enumerate(keypoints):
        px, py = int(math.floor(x)), int(math.floor(y))
        if not (0 <= px < size and 0 <= py < size):
            continue
        out[j] = (round(float(x), 2), round(float(y), 2), 1 if ids[py, px] > k else 2)
    return out


# ---------------------------------------------------------------------------------------------- dataset


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Images per split; validates the arguments."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n - n_val - n_test < 1:
        raise ValueError(f"no training images left: n={n}, val_fraction={val_fraction}, test_fraction={test_fraction}")
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def coco_categories() -> list[dict[str, Any]]:
    """COCO ``categories``: the shapes, then ``person`` with its keypoint names and skeleton."""
    cats: list[dict[str, Any]] = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)
    ]
    cats.append({
        "id": len(SHAPES) + 1, "name": PERSON, "supercategory": PERSON,
        "keypoints": list(KEYPOINTS), "skeleton": [list(edge) for edge in SKELETON],
    })
    return cats


def _annotation(inst: dict[str, Any], ann_id: int, image_id: int) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(inst["mask"].astype(np.uint8)))
    ann: dict[str, Any] = {
        "id": ann_id, "image_id": image_id, "category_id": inst["category_id"],
        "bbox": [float(v) for v in inst["bbox"]], "area": float(inst["area"]), "iscrowd": 0,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
    }
    if "keypoints" in inst:
        kp = inst["keypoints"]
        ann["keypoints"] = [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(kp.reshape(-1).tolist())]
        ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
    return ann


def generate_dataset(
    out: Path,
    n: int,
    size: int = 512,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``n`` scenes as a COCO dataset under ``out`` (see the module docstring for the layout).

    Returns:
        A summary: ``{"out": str, "size": int, "seed": int, "images": {split: count},
        "instances": {category: count}}``.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    sizes = split_sizes(n, val_fraction, test_fraction)
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {name: 0 for name in CATEGORIES}
    bar = tqdm(total=n, desc="synth", unit="img", disable=not progress)
    index = 0
    for split in SPLITS:
        image_dir = out / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, sizes[split] + 1):
            image, instances = render_scene(np.random.default_rng([seed, index]), size)
            index += 1
            file_name = f"{image_id:06d}.png"
            Image.fromarray(image).save(image_dir / file_name, compress_level=6)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            for inst in instances:
                annotations.append(_annotation(inst, len(annotations) + 1, image_id))
                counts[inst["category"]] += 1
            bar.update(1)
        coco = {
            "info": {"description": f"fpnlink synthetic world, seed {seed}, size {size}", "version": "1"},
            "images": images, "annotations": annotations, "categories": coco_categories(),
        }
        (out / "annotations" / f"{split}.json").write_text(json.dumps(coco, separators=(",", ":")))
    bar.close()
    return {"out": str(out), "size": size, "seed": seed, "images": sizes, "instances": counts}


# ---------------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fpnlink data synth``."""
    data = subparsers.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("synth", help="generate the synthetic COCO-format world")
    p.add_argument("--n", type=int, required=True, help="total images over train/val/test")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same bytes)")
    p.add_argument("--out", type=Path, required=True, help="output folder (keep it outside the repository)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of images in val")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of images in test")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        summary = generate_dataset(args.out, args.n, args.size, args.seed, args.val_fraction, args.test_fraction)
    except ValueError as exc:
        print(f"fpnlink data synth: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
