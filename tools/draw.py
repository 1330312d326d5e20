"""Draw results (boxes, COCO RLE masks, keypoints) onto an image for people to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

# COCO person skeleton over the 17 keypoints (0-based pairs).
SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
    (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190),
)
MASK_ALPHA = 0.45


def annotate(image: Image.Image, result: dict, min_score: float = 0.5) -> Image.Image:
    """Overlay a result dict (``result_to_dict`` form) on ``image``; detections under ``min_score`` are skipped.

    Masks are blended first, then boxes with labels, then keypoints and their skeleton.
    """
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for index, det in enumerate(result.get("segment", [])):
        if det["score"] < min_score or "mask" not in det:
            continue
        binary = mask_utils.decode({"size": det["mask"]["size"], "counts": det["mask"]["counts"].encode()})
        colour = np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
        canvas[binary.astype(bool)] = (1 - MASK_ALPHA) * canvas[binary.astype(bool)] + MASK_ALPHA * colour
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    boxes = result.get("detect") or result.get("segment") or []
    for index, det in enumerate(boxes):
        if det["score"] < min_score:
            continue
        colour = PALETTE[index % len(PALETTE)]
        draw.rectangle(det["box"], outline=colour, width=2)
        draw.text((det["box"][0] + 2, det["box"][1] + 1), f"{det['category']} {det['score']:.2f}", fill=colour)
    for det in result.get("keypoints", []):
        if det["score"] < min_score:
            continue
        points = np.asarray(det["keypoints"], dtype=np.float32).reshape(-1, 3)
        for a, b in SKELETON:
            if a < len(points) and b < len(points):
                draw.line([tuple(points[a, :2]), tuple(points[b, :2])], fill=(255, 255, 255), width=2)
        for x, y, _ in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 0, 0))
    return out
