"""RD evaluation of the learned codec: ``fpnlink codec eval``.

Writes rd.json, rd.md and rd.png: bits per input pixel against feature PSNR for each scale, learned
(real bytes, container header included) against ``quant`` at 1..8 bits.

Feature PSNR of one map is ``10 log10((max x - min x)^2 / MSE)``, averaged over images; "all" is the
total rate against the mean of the four scales' PSNR. Bits per input pixel divide by the ORIGINAL
image's pixel count.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...shared.codec import make_codec
from ...shared.model import TRANSMITTED_SCALES
from ..bd_rate import bd_rate
from ..devices import resolve_device
from .shards import FeatureShards


def feature_psnr(original: Tensor, decoded: Tensor) -> float:
    """``10 log10(peak^2 / MSE)`` with peak = the original map's value range."""
    original, decoded = original.double(), decoded.double()
    mse = float((original - decoded).pow(2).mean())
    peak = float(original.max() - original.min())
    return 100.0 if mse == 0 else 10 * math.log10(max(peak, 1e-12) ** 2 / mse)


@torch.inference_mode()
def rd_points(codec: Any, shards: FeatureShards, phis: list[float], scales: tuple[str, ...] = TRANSMITTED_SCALES,
              ) -> list[dict[str, Any]]:
    """Code every held-out item at every ``phi`` with real bytes (one frame of ``scales`` per item, so a
    cross-scale codec decodes as it would in service); one point per ``phi``.

    Returns:
        ``[{"phi", "scales": {name: {"bpp", "psnr", "bytes"}}, "all": {"bpp", "psnr"}}]``, where bpp is
        bits per original input pixel summed over images, psnr the mean over images.
    """
    pixels = sum(item["original_size"][0] * item["original_size"][1] for item in shards.items)
    points = []
    for phi in phis:
        total_bytes, psnrs = dict.fromkeys(scales, 0), {name: [] for name in scales}
        for i in range(len(shards)):
            frame = {name: shards.features[name][i].float().unsqueeze(0) for name in scales}
            records = codec.encode(frame, dict.fromkeys(frame, phi))
            decoded = codec.decode(records)
            for record in records:
                total_bytes[record.name] += len(record.payload)
                psnrs[record.name].append(feature_psnr(frame[record.name], decoded[record.name].float()))
        per_scale = {name: {"bytes": total_bytes[name], "bpp": total_bytes[name] * 8 / pixels,
                            "psnr": float(np.mean(psnrs[name]))} for name in scales}
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
                   scales: tuple[str, ...] = TRANSMITTED_SCALES, device: str = "cpu",
                   codec_name: str = "learned") -> dict[str, Any]:
    """RD table of a learned codec (``learned`` or ``xscale``) against ``quant``; writes rd.json, rd.md and
    rd.png under ``out``."""
    learned = make_codec(codec_name, checkpoint, device=resolve_device(device))
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
