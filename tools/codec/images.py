"""Image sources: an image folder, a COCO json (images next to it or under ../images/<split>/), or
``synth:N[:SEED[:SIZE]]`` (scenes from ``tools.synth.render_scene``, random textures without it)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from fpnlink.shared.imageio import IMAGE_SUFFIXES, read_image, to_tensor

_SYNTH = re.compile(r"^synth:(\d+)(?::(\d+))?(?::(\d+))?$")


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
        from ..synth import render_scene
    except ImportError:
        return _textured_image(rng, size)
    return render_scene(rng, size)[0]


def iter_images(data: str, limit: int | None = None) -> Iterator[tuple[str, Tensor]]:
    """``(name, [3, H, W] float in [0, 1])`` from a folder, a COCO json or ``synth:N[:SEED[:SIZE]]``."""
    if match := _SYNTH.match(data):
        count, seed, size = int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 512)
        for i in range(count if limit is None else min(count, limit)):
            yield f"synth:{seed}:{i}", to_tensor(render_image(np.random.default_rng([seed, i]), size))
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
        yield str(file), read_image(file)


def _coco_files(annotations: Path) -> list[Path]:
    """Image paths of a COCO json: ``../images/<stem>/`` (fpnlink synth layout) or beside the json."""
    images = json.loads(annotations.read_text())["images"]
    candidates = [annotations.parent.parent / "images" / annotations.stem, annotations.parent]
    root = next((c for c in candidates if images and (c / images[0]["file_name"]).is_file()), None)
    if root is None:
        raise ValueError(f"cannot find the images of {annotations} (looked in {[str(c) for c in candidates]})")
    return [root / entry["file_name"] for entry in images]
