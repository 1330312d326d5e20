"""Fast MFIP: predict the scale weights from cheap feature statistics, without running any head.

Full MFIP (:mod:`.importance`) codes every scale at several levels and runs the task heads ``1 + n*m``
times; the fast predictor replaces that with a tiny MLP trained on full-MFIP labels::

    P2..P5 ──> 5 statistics per scale (20 inputs) ──> standardise ──> Linear-tanh-Linear ──> softmax ──> w_i

Statistics of scale ``i``, read on ``x``, its ``[C, h, w]`` map subsampled with stride ``s_i`` so that at
most ``STAT_POSITIONS`` positions remain (the cost must stay a small fraction of the backbone's; the
gradients are differences between neighbours of that grid, so the predictor belongs to one input size,
like the rest of the profile):

=================  =================================================================
``log_std``        ``log(std(x) + eps)``
``abs_mean``       ``mean|x| / std``
``mean``           ``mean(x) / std``
``energy_frac``    ``S_i * mean(x^2) / sum_j S_j * mean(x_j^2)``: the scale's share of energy
``grad``           ``(mean|dx| + mean|dy|) / 2 / std`` on the subsampled grid: spatial-gradient energy
=================  =================================================================

Training minimises the cross-entropy between the label weights and the softmax (soft labels), with
weight decay, starting from the label prior (output bias ``log mean(w)``, small hidden weights), so few
calibration images yield a predictor near the average weights rather than a wild one. The parameters
are plain lists (JSON in the profile, :mod:`.profile`) and prediction is numpy only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from ..model.split import TRANSMITTED_SCALES

if TYPE_CHECKING:
    from .importance import Importance

PREDICTOR_FORMAT = "fpnlink.mfiba.fast/1"
STAT_NAMES: tuple[str, ...] = ("log_std", "abs_mean", "mean", "energy_frac", "grad")
STAT_POSITIONS = 1024
"""Most spatial positions a statistic reads per scale (larger maps are subsampled)."""
EPS = 1e-6
HIDDEN = 8
STEPS = 400
LEARNING_RATE = 0.02
WEIGHT_DECAY = 1e-3


def _stride(height: int, width: int) -> int:
    return max(1, math.ceil(math.sqrt(height * width / STAT_POSITIONS)))


def feature_stats(features: Mapping[str, Tensor]) -> np.ndarray:
    """The predictor's 20 inputs (``len(scales) * len(STAT_NAMES)``), scale-major.

    Args:
        features: ``'0'..'3'`` -> ``[1, C, h, w]`` (or ``[C, h, w]``) maps of one image.
    """
    per_scale = []
    energies = []
    for name in features:
        x = features[name]
        x = x[0] if x.dim() == 4 else x
        channels, height, width = x.shape
        s = _stride(height, width)
        # numpy on the small subsampled grid: torch would wake its thread pool for every tiny reduction.
        sub = np.ascontiguousarray(x[:, ::s, ::s].detach().cpu().float().numpy())
        mean = float(sub.mean())
        square = float(np.square(sub).mean())
        std = math.sqrt(max(square - mean * mean, 0.0)) + EPS
        abs_mean = float(np.abs(sub).mean())
        gx = float(np.abs(np.diff(sub, axis=2)).mean()) if sub.shape[2] > 1 else 0.0
        gy = float(np.abs(np.diff(sub, axis=1)).mean()) if sub.shape[1] > 1 else 0.0
        energies.append(square * height * width)
        per_scale.append([math.log(std), abs_mean / std, mean / std, 0.0, (gx + gy) / 2 / std])
    total = sum(energies) or 1.0
    for row, energy in zip(per_scale, energies):
        row[3] = energy / total
    return np.asarray(per_scale, dtype=np.float64).ravel()


@dataclass(frozen=True)
class FastPredictor:
    """A trained statistics -> weights MLP (numpy inference).

    Attributes:
        scales: the scales it predicts, in output order.
        input_mean, input_std: standardisation of the statistics.
        layers: ``[(W1 [H, D], b1 [H]), (W2 [n, H], b2 [n])]``.
        train: training metadata (samples, steps, fit error).
    """

    scales: tuple[str, ...]
    input_mean: np.ndarray
    input_std: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    train: dict[str, Any] = field(default_factory=dict)

    def predict_stats(self, stats: np.ndarray) -> np.ndarray:
        """Weights ``[..., n]`` from statistics ``[..., D]``."""
        z = (np.asarray(stats, dtype=np.float64) - self.input_mean) / self.input_std
        (w1, b1), (w2, b2) = self.layers
        logits = np.tanh(z @ w1.T + b1) @ w2.T + b2
        logits -= logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=-1, keepdims=True)

    def predict(self, features: Mapping[str, Tensor]) -> dict[str, float]:
        """Weights for one image's ``'0'..'3'`` maps."""
        if tuple(features) != self.scales:
            raise ValueError(f"the predictor was trained on scales {list(self.scales)}, got {list(features)}")
        return dict(zip(self.scales, self.predict_stats(feature_stats(features)).tolist()))

    def importance(self, features: dict[str, Tensor], *_: Any) -> Importance:
        """MFIP ``fast`` mode (same call signature as full MFIP)."""
        from .importance import Importance

        start = time.perf_counter()
        weights = self.predict(features)
        ms = (time.perf_counter() - start) * 1e3
        return Importance(weights=weights, mode="fast", timing_ms={"predict": ms, "total": ms})

    # ------------------------------------------------------------------------------------------ (de)serialise

    def to_params(self) -> dict[str, Any]:
        """JSON-ready parameters (what the profile stores)."""
        return {
            "format": PREDICTOR_FORMAT,
            "scales": list(self.scales),
            "stats": list(STAT_NAMES),
            "stat_positions": STAT_POSITIONS,
            "input_mean": self.input_mean.tolist(),
            "input_std": self.input_std.tolist(),
            "activation": "tanh",
            "layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in self.layers],
            "train": dict(self.train),
        }

    @classmethod
    def from_params(cls, params: Any, where: str = "fast_predictor") -> FastPredictor:
        """Rebuild from :meth:`to_params`; ``ValueError`` names the bad field (prefixed by ``where``)."""
        if not isinstance(params, dict):
            raise ValueError(f"{where} must be an object, got {type(params).__name__}")
        if params.get("format") != PREDICTOR_FORMAT:
            raise ValueError(f"{where}.format must be {PREDICTOR_FORMAT!r}, got {params.get('format')!r}")
        scales = params.get("scales")
        if not isinstance(scales, list) or not scales or not all(isinstance(s, str) for s in scales):
            raise ValueError(f"{where}.scales must be a non-empty list of scale names, got {scales!r}")
        if params.get("stats") != list(STAT_NAMES) or params.get("activation") != "tanh":
            raise ValueError(f"{where}: stats must be {list(STAT_NAMES)} with tanh activation (another version?)")
        dim = len(scales) * len(STAT_NAMES)
        mean = _array(params.get("input_mean"), f"{where}.input_mean", (dim,))
        std = _array(params.get("input_std"), f"{where}.input_std", (dim,))
        if (std <= 0).any():
            raise ValueError(f"{where}.input_std must be positive")
        layers = params.get("layers")
        if not isinstance(layers, list) or len(layers) != 2 or not all(isinstance(x, dict) for x in layers):
            raise ValueError(f"{where}.layers must hold 2 layers of {{weight, bias}}")
        w1 = _array(layers[0].get("weight"), f"{where}.layers[0].weight", (None, dim))
        hidden = w1.shape[0]
        b1 = _array(layers[0].get("bias"), f"{where}.layers[0].bias", (hidden,))
        w2 = _array(layers[1].get("weight"), f"{where}.layers[1].weight", (len(scales), hidden))
        b2 = _array(layers[1].get("bias"), f"{where}.layers[1].bias", (len(scales),))
        train = params.get("train", {})
        if not isinstance(train, dict):
            raise ValueError(f"{where}.train must be an object")
        return cls(tuple(scales), mean, std, ((w1, b1), (w2, b2)), train)


def _array(value: Any, where: str, shape: tuple[int | None, ...]) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a numeric array") from None
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        raise ValueError(f"{where} must have shape {tuple('*' if s is None else s for s in shape)}, "
                         f"got {array.shape}")
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"{where} must be non-empty and finite")
    return array


def train_fast_predictor(stats: np.ndarray, labels: np.ndarray, scales: Sequence[str] = TRANSMITTED_SCALES,
                         hidden: int = HIDDEN, steps: int = STEPS, seed: int = 0) -> FastPredictor:
    """Fit the MLP on ``stats`` ``[N, D]`` -> full-MFIP ``labels`` ``[N, n]`` (rows summing to 1).

    Raises:
        ValueError: shapes disagree, no samples, or labels are not weight vectors.
    """
    x = np.asarray(stats, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    n = len(scales)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need stats [N, D] and labels [N, {n}] with N >= 1, got {x.shape} and {y.shape}")
    if x.shape[1] != n * len(STAT_NAMES) or y.shape[1] != n:
        raise ValueError(f"stats must have {n * len(STAT_NAMES)} columns and labels {n}, "
                         f"got {x.shape[1]}, {y.shape[1]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or (y < 0).any() or not np.allclose(y.sum(1), 1, atol=1e-6):
        raise ValueError("stats must be finite and every label row non-negative, summing to 1")
    mean = x.mean(0)
    std = np.maximum(x.std(0), 1e-6)
    prior = np.clip(y.mean(0), 1e-4, None)
    rng = np.random.default_rng(seed)
    z = (x - mean) / std
    params = [
        rng.uniform(-1, 1, (hidden, z.shape[1])) * 0.5 / math.sqrt(z.shape[1]),  # W1
        np.zeros(hidden),  # b1
        rng.uniform(-1, 1, (n, hidden)) * 0.1 / math.sqrt(hidden),  # W2
        np.log(prior / prior.sum()),  # b2: start at the label prior
    ]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    beta1, beta2 = 0.9, 0.999
    # Full-batch Adam with L2 weight decay, in numpy: a 20-8-4 MLP needs no autograd, and torch would
    # wake its thread pool for every one of thousands of tiny ops.
    for step in range(1, steps + 1):
        w1, b1, w2, b2 = params
        h = np.tanh(z @ w1.T + b1)
        logits = h @ w2.T + b2
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        dlogits = (p - y) / len(z)  # d(cross-entropy)/d(logits), rows of y sum to 1
        dh = (dlogits @ w2) * (1 - h * h)
        grads = [dh.T @ z, dh.sum(0), dlogits.T @ h, dlogits.sum(0)]
        for i, (param, grad) in enumerate(zip(params, grads)):
            grad = grad + WEIGHT_DECAY * param
            m, v = moments[i]
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad * grad
            moments[i] = (m, v)
            params[i] = param - LEARNING_RATE * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + 1e-8)
    layers = ((params[0], params[1]), (params[2], params[3]))
    predictor = FastPredictor(tuple(scales), mean, std, layers)  # type: ignore[arg-type]
    mae = float(np.abs(predictor.predict_stats(x) - y).mean())
    train = {"samples": int(len(x)), "steps": steps, "hidden": hidden, "train_mae": mae,
             "prior_mae": float(np.abs(y - y.mean(0)).mean())}
    return FastPredictor(tuple(scales), mean, std, layers, train)  # type: ignore[arg-type]
