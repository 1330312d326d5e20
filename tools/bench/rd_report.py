"""The RD benchmark's report: configuration names, BD-rate tables, RD plots and ``report.md``.

Pure functions of the report dictionary that :class:`fpnlink.tools.bench.rd.RdBench` builds, so they can be
tested (and re-rendered from a saved ``rd.json``) without running a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpnlink.edge.operating_point import DEFAULT_BUDGET

from ..bd_rate import bd_rate_checked
from ..evaluation import METRICS

CONFIGS: tuple[str, ...] = ("raw16", "quant_uniform", "learned_uniform", "mfiba_full", "mfiba_fast", "jpeg", "webp",
                            "edge_default")
LABELS: dict[str, str] = {
    "raw16": "(a) raw16 features",
    "quant_uniform": "(b) quant, uniform phi",
    "learned_uniform": "(c) learned, uniform phi",
    "mfiba_full": "(d) MFIBA, full MFIP",
    "mfiba_fast": "(d) MFIBA, fast MFIP",
    "jpeg": "(e) JPEG image",
    "webp": "(e) WebP image",
    "edge_default": f"(f) edge default: {DEFAULT_BUDGET}, fast MFIP",
}
BD_ANCHORS: tuple[str, ...] = ("learned_uniform", "quant_uniform", "jpeg", "webp")
EDGE_TARGETS: dict[str, float] = {"bytes_vs_jpeg75_max": 0.5, "box_ap_delta_abs_max": 0.02}
"""Product targets of the edge default: mean frame bytes at most half a quality-75 JPEG's, box AP within 0.02
of the uncompressed features'."""


# ---------------------------------------------------------------------------------------------- BD-rate


def task_curve(entry: dict[str, Any], metric: str) -> list[tuple[float, float | None]]:
    """``(bpp of the task's stream, AP)`` per point of one configuration."""
    return [(d["task_bpp"].get(metric, d["bpp"]), d["ap"][metric]) for d in entry["detail"]]


def bd_between(configs: dict[str, Any], anchor: str, test: str, metric: str) -> tuple[float | None, str | None]:
    """BD-rate of configuration ``test`` against ``anchor`` on ``metric``; null with the reason otherwise."""
    for name in (anchor, test):
        if configs[name]["skipped"]:
            return None, f"{name} skipped: {configs[name]['skipped']}"
    if anchor == test:
        return None, "same configuration"
    value, reason = bd_rate_checked(task_curve(configs[anchor], metric), task_curve(configs[test], metric))
    return (None if value is None else round(value, 3)), (None if reason is None else f"{test} vs {anchor}: {reason}")


def bd_rate_report(configs: dict[str, Any], images: int) -> dict[str, Any]:
    """The headline BD-rates and the full table (every configuration against each anchor, per task), with the
    number of images every rate point rests on."""
    mfiba_codec = configs["mfiba_full"].get("codec") or configs["mfiba_fast"].get("codec")
    uniform = "learned_uniform" if mfiba_codec not in (None, "quant") else "quant_uniform"
    features = next((c for c in ("mfiba_full", "mfiba_fast", "learned_uniform", "quant_uniform")
                     if not configs[c]["skipped"]), "mfiba_full")
    out: dict[str, Any] = {"method": "pchip over log10(bpp), monotone envelope of each curve", "images": images,
                           "mfiba_vs_uniform_configs": ["mfiba_full", uniform],
                           "mfiba_fast_vs_uniform_configs": ["mfiba_fast", uniform],
                           "features_vs_jpeg_configs": [features, "jpeg"],
                           "features_vs_webp_configs": [features, "webp"]}
    reasons: dict[str, dict[str, str | None]] = {}
    for headline, (test, anchor) in {"mfiba_vs_uniform": ("mfiba_full", uniform),
                                     "mfiba_fast_vs_uniform": ("mfiba_fast", uniform),
                                     "features_vs_jpeg": (features, "jpeg"),
                                     "features_vs_webp": (features, "webp")}.items():
        values = {m: bd_between(configs, anchor, test, m) for m in METRICS}
        out[headline] = {m: v for m, (v, _) in values.items()}
        reasons[headline] = {m: r for m, (_, r) in values.items()}
    table: dict[str, Any] = {}
    table_reasons: dict[str, Any] = {}
    for anchor in BD_ANCHORS:
        table[f"vs_{anchor}"], table_reasons[f"vs_{anchor}"] = {}, {}
        for name in CONFIGS:
            values = {m: bd_between(configs, anchor, name, m) for m in METRICS}
            table[f"vs_{anchor}"][name] = {m: v for m, (v, _) in values.items()}
            table_reasons[f"vs_{anchor}"][name] = {m: r for m, (_, r) in values.items()}
    out["reasons"] = reasons
    out["table"] = table
    out["table_reasons"] = table_reasons
    return out


# ---------------------------------------------------------------------------------------------- edge default


def edge_default_summary(entry: dict[str, Any], ap_uncompressed: dict[str, float | None],
                         jpeg75_bytes: Sequence[int]) -> dict[str, Any]:
    """The edge default's mean frame bytes against a quality-75 JPEG of the same images (``jpeg75_bytes``: file
    bytes per image), its AP minus the uncompressed features' and :data:`EDGE_TARGETS`; the reason when skipped."""
    if entry["skipped"]:
        return {"ran": False, "reason": entry["skipped"]}
    detail = entry["detail"][0]
    jpeg75 = sum(jpeg75_bytes) / len(jpeg75_bytes)
    ratio = detail["bytes_per_frame"] / jpeg75
    ap = detail["ap"]
    delta = {m: None if ap[m] is None or ap_uncompressed[m] is None else ap[m] - ap_uncompressed[m] for m in METRICS}
    return {
        "ran": True,
        "budget": detail["setting"]["budget"],
        "budget_bits_per_frame": detail["rate_control"]["budget_bits_mean"],
        "budget_error_median": detail["rate_control"]["budget_error_median"],
        "bytes_per_frame": detail["bytes_per_frame"],
        "jpeg75_bytes_per_frame": jpeg75,
        "bytes_vs_jpeg75": ratio,
        "ap_delta_vs_uncompressed": delta,
        "targets": EDGE_TARGETS,
        "meets_targets": {"bytes_vs_jpeg75": ratio <= EDGE_TARGETS["bytes_vs_jpeg75_max"],
                          "box_ap_delta": None if delta["box"] is None else
                          abs(delta["box"]) <= EDGE_TARGETS["box_ap_delta_abs_max"]},
    }


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "missed")


def _edge_lines(edge: dict[str, Any], codec: str | None) -> list[str]:
    if not edge["ran"]:
        return [f"Skipped: {edge['reason']}."]
    meets = edge["meets_targets"]
    deltas = ", ".join(f"{m} {_fmt(edge['ap_delta_vs_uncompressed'][m])}" for m in METRICS)
    return [
        f"- budget {edge['budget']} ({_fmt(edge['budget_bits_per_frame'])} bits/frame), fast MFIP, codec {codec}: "
        f"{_fmt(edge['bytes_per_frame'])} bytes/frame, |frame - budget| / budget median "
        f"{_fmt(edge['budget_error_median'])}",
        f"- against a quality-75 JPEG of the same images ({_fmt(edge['jpeg75_bytes_per_frame'])} bytes/frame): "
        f"{_fmt(edge['bytes_vs_jpeg75'])} (target <= {EDGE_TARGETS['bytes_vs_jpeg75_max']:g}: "
        f"{_verdict(meets['bytes_vs_jpeg75'])})",
        f"- AP minus the uncompressed features': {deltas} (target: box within "
        f"{EDGE_TARGETS['box_ap_delta_abs_max']:g}: {_verdict(meets['box_ap_delta'])})",
    ]


# ---------------------------------------------------------------------------------------------- outputs


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per task: AP against bpp (log axis) for every configuration, the uncompressed AP dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in METRICS:
        fig, axis = plt.subplots(figsize=(6.4, 4.4))
        for name, entry in report["configs"].items():
            points = [(b, a) for b, a in task_curve(entry, metric) if a is not None and b > 0]
            if entry["skipped"] or not points:
                continue
            xs, ys = zip(*points)
            style = "s" if len(points) == 1 else ("--o" if entry["kind"] == "image" else "-o")
            axis.plot(xs, ys, style, label=LABELS[name], markersize=4)
        reference = report["ap_uncompressed"][metric]
        if reference is not None:
            axis.axhline(reference, color="gray", linestyle=":", label="uncompressed features")
        axis.set_xscale("log")
        axis.set_xlabel("bits per original pixel (every frame byte counted)")
        axis.set_ylabel(f"{metric} AP@[.5:.95]")
        axis.set_title(f"{metric} AP vs rate ({report['data']['images']} {report['data']['split']} images, "
                       f"weights {Path(report['weights']['name']).name})", fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"rd_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _learned_line(entry: dict[str, Any]) -> str:
    if entry["skipped"]:
        return f"skipped ({entry['skipped']})"
    return f"`{entry.get('codec_checkpoint')}` (fingerprint {entry.get('codec_fingerprint')})"


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: setup, AP of the uncompressed features, every point, MFIBA, the edge default, BD-rates,
    timings, notes."""
    data, weights = report["data"], report["weights"]
    lines = [
        "# fpnlink RD benchmark",
        "",
        f"- command: `{report['command']}`" if report["command"] else "- command: (library call)",
        f"- data: `{data['path']}` ({data['kind']}, split {data['split']}, {data['images']} images)",
        f"- weights: `{weights['name']}` (trained: {weights['trained']}, fingerprint {weights['fingerprint']})",
        f"- learned codec: {_learned_line(report['configs']['learned_uniform'])}",
        f"- network input: min_size {report['model_config']['min_size']}, max_size "
        f"{report['model_config']['max_size']}, {report['model_config']['detections_per_img']} detections/image",
        f"- rate: bpp = serialized frame (or image file) bytes x 8 / original H x W, mean over frames; "
        f"kbps at {report['fps']:g} fps",
        f"- machine: {report['machine']}, device {report['device']}; wall {report['wall_s']} s",
        "",
        "## AP of the uncompressed features",
        "",
        "| task | AP | AP50 |",
        "|---|---|---|",
    ]
    for m in METRICS:
        lines.append(f"| {m} | {_fmt(report['ap_uncompressed'][m])} | {_fmt(report['ap50_uncompressed'][m])} |")
    for m, reason in report["ap_null_reasons"].items():
        lines.append(f"\n{m} AP is n/a: {reason}.")
    lines += ["", "## Rate points", "",
              "| configuration | setting | bpp | bytes/frame | kbps | box AP | mask AP | keypoint AP |",
              "|---|---|---|---|---|---|---|---|"]
    for name, entry in report["configs"].items():
        if entry["skipped"]:
            lines.append(f"| {entry['label']} | skipped: {entry['skipped']} | | | | | | |")
            continue
        for d in entry["detail"]:
            setting = ", ".join(f"{k}={_fmt(v)}" for k, v in d["setting"].items())
            lines.append(f"| {entry['label']} | {setting} | {_fmt(d['bpp'])} | {_fmt(d['bytes_per_frame'])} | "
                         f"{_fmt(d['kbps'])} | " + " | ".join(_fmt(d["ap"][m]) for m in METRICS) + " |")
    mfiba = report["mfiba"]
    if mfiba.get("ran"):
        lines += ["", "## MFIBA", "", f"- codec: {mfiba['codec_choice']}; budgets matched per frame to "
                  f"`{mfiba['budgets_matched_to']}`"]
        for index, profile in mfiba["profiles"].items():
            lines.append(f"- stream {index} profile: {profile['source']}; tasks {profile['tasks']}, phi grid "
                         f"{profile['phi_grid']}")
        for mode, weights_mean in mfiba["mfip_mean_weights"].items():
            lines.append(f"- mean MFIP weights ({mode}): "
                         + ", ".join(f"{k}: {v:.3f}" for k, v in weights_mean.items()))
        for name in ("mfiba_full", "mfiba_fast"):
            for d in report["configs"][name]["detail"]:
                rc = d["rate_control"]
                lines.append(f"- {name} point {d['setting']['point']}: |frame - budget| / budget median "
                             f"{_fmt(rc['budget_error_median'])}, mean phi "
                             + ", ".join(f"{k}: {v:.2f}" for k, v in rc["phi_mean"].items()))
    lines += ["", "## Edge default operating point", ""]
    lines += _edge_lines(report["edge_default"], report["configs"]["edge_default"].get("codec"))
    bd = report["bd_rate_percent"]
    lines += ["", "## BD-rate (percent; negative = fewer bits for the same AP)", "",
              f"Method: {bd['method']}; every point rests on {bd['images']} images.", "",
              "| headline | configurations | box | mask | keypoint |", "|---|---|---|---|---|"]
    for headline in ("mfiba_vs_uniform", "mfiba_fast_vs_uniform", "features_vs_jpeg", "features_vs_webp"):
        test, anchor = bd[f"{headline}_configs"]
        values = " | ".join(_fmt(bd[headline][m]) for m in METRICS)
        lines.append(f"| {headline} | {test} vs {anchor} | {values} |")
    for anchor_key, rows in bd["table"].items():
        lines += ["", f"### {anchor_key}", "", "| configuration | box | mask | keypoint |", "|---|---|---|---|"]
        for name, values in rows.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(values[m]) for m in METRICS) + " |")
    reasons = sorted({r for per in bd["reasons"].values() for r in per.values() if r})
    if reasons:
        lines += ["", "Why some headline values are n/a:", ""] + [f"- {r}" for r in reasons]
    lines += ["", "## Per-stage timings (median ms per call; heads per variant)", "",
              "backbone: edge half on one image (also on each decoded JPEG/WebP); `<config>_encode` / `_decode`: "
              "codec on one frame; `mfiba_*_rate_control`: Eq. 6 plan + encode (+ at most one correction); "
              "`mfip_*`: importance of one image; `heads_<arch>`: cloud half per variant (`heads_shared`: one "
              "RPN + box head with the mask and keypoint branches attached).", "",
              "| stage | median ms | n |", "|---|---|---|"]
    for stage, t in report["timings_ms"].items():
        lines.append(f"| {stage} | {_fmt(t['median_ms'])} | {t['n']} |")
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "Plots: " + ", ".join(f"![{m}](rd_{m}.png)" for m in METRICS), ""]
    return "\n".join(lines)
