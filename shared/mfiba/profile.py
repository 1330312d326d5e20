"""The MFIBA profile: everything calibration fitted, as versioned JSON data (``fpnlink.mfiba.profile/1``).

Layout (every rate in bits per spatial position of its scale, every loss ``1 - AP``)::

    {
      "format": "fpnlink.mfiba.profile/1",
      "codec":    {"name", "fingerprint", "phi_range": [lo, hi], "phi_grid": "continuous" | "integer",
                   "starve_phi": phi | null},                    # absent in older profiles: null
      "backbone": {"weights", "fingerprint", "min_size", "max_size"},
      "tasks": ["detect", ...], "k": 4, "rate_unit": "bits/position",
      "loss_rate": {                                            # Eq. 3
        "global": {"alpha", "beta", "cc", "rmse", "n"},
        "scales": {"0": {...}, ...},
        "quadratic": {"global": {"coef": [c0, c1, c2], "cc", "rmse", "n"}, "0": {...}, ...}},
      "rate_phi": {"0": {"kind": "linear" | "pchip", "a", "b",   # Eq. 7 (+ spline knots)
                         "knots_phi": [...], "knots_rate": [...], "cc", "rmse", "line_cc", "line_rmse"}, ...},
      "fast_predictor": {...} | null,                            # .fast_predictor parameters
      "weight_gains": [{"rate": R, "gains": {"0": g, ...}}, ...],  # `fpnlink mfiba tune`; absent: 1 each
      "calibration": {...},                                      # images, levels, timings, mean weights...
      "samples": {"loss_rate": [[scale, w, d, R], ...], "rate_phi": [[scale, phi, R], ...]}
    }

:func:`load_profile` validates every field before anything uses it and raises ``ValueError`` naming
the field (``loss_rate.scales.2.beta must be ...``). :meth:`Profile.check_compatible` refuses a profile
made for another codec or backbone (its rate and loss models would not apply).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..codec.base import FeatureCodec
from ..errors import FingerprintMismatchError
from ..model.zoo import TASKS
from .allocate import K_FPN, ScaleRateModel
from .fast_predictor import FastPredictor
from .loss_rate import CauchyFit, FitQuality, LossRateModel, QuadraticFit
from .rate_phi import RatePhiModel

PROFILE_FORMAT = "fpnlink.mfiba.profile/1"
SHIPPED_PROFILES = Path(__file__).with_name("assets")
"""Profiles shipped with fpnlink, for its shipped backbone and codecs. ``xscale-synthetic.json`` (the shipped
xscale checkpoint on the ``synthetic`` backbone at 256 px; 13 min on 2 CPU cores) was made by::

    fpnlink data synth --n 4000 --size 256 --seed 0 --out DATA
    fpnlink mfiba calibrate --data DATA/annotations/train.json --weights synthetic --codec xscale \
        --out xscale-synthetic.json --images 100 --levels 2 --min-size 256 --max-size 256 \
        --tasks detect,segment,keypoints --detections 20 --threads 2
    fpnlink mfiba tune xscale-synthetic.json --data DATA --out xscale-synthetic.json --images 128 --skip 100 \
        --scales 1 --grid 1,0.5,2,4,8 --phis 1,2,3,3.5 --threads 2   # P3 x4 / x2 / x4 / x1 (23 min)

Re-make it whenever the codec or the backbone changes (its fingerprints no longer match, and it is skipped).
"""
RATE_UNIT = "bits/position"
PHI_GRIDS: tuple[str, ...] = ("continuous", "integer")


STARVE_MARGIN = 1e-3
"""Where a codec has a starve level, its coded rates are modelled on ``(starve_phi + STARVE_MARGIN, phi_max)``."""


@dataclass(frozen=True)
class CodecInfo:
    """The codec a profile was calibrated for.

    ``phi_grid`` says whether phi takes integer values only; ``starve_phi`` is the codec's starve level
    (:attr:`~fpnlink.shared.codec.base.FeatureCodec.starve_phi`), which the rate-phi models leave out.
    """

    name: str
    fingerprint: str
    phi_range: tuple[float, float]
    phi_grid: str = "continuous"
    starve_phi: float | None = None

    @property
    def coded_phi_range(self) -> tuple[float, float]:
        """The phi range the rate-phi models cover: ``phi_range`` less the starve level."""
        low, high = self.phi_range
        return (low, high) if self.starve_phi is None else (self.starve_phi + STARVE_MARGIN, high)


@dataclass(frozen=True)
class BackboneInfo:
    """The backbone (and input resize) whose features were calibrated."""

    weights: str
    fingerprint: str
    min_size: int
    max_size: int


@dataclass(frozen=True)
class GainPoint:
    """Weight gains tuned at one budget: ``rate`` in payload bits per position of the finest scale (P2)."""

    rate: float
    gains: dict[str, float]


@dataclass(frozen=True)
class Profile:
    """Fitted MFIBA parameters for one (codec, backbone) pair.

    Attributes:
        loss_rate: Eq. 3, global and per scale (with the quadratic baseline).
        rate_phi: scale -> Eq. 7 model (line or monotone spline) over ``codec.coded_phi_range``.
        fast_predictor: the fast-MFIP predictor, when calibration trained one.
        weight_gains: gains on the MFIP weights before allocation, tuned at a few budgets (``fpnlink mfiba
            tune``, the paper's finetuned weights), in increasing ``rate``; empty: every gain 1.
        calibration: metadata (images, levels, timings, mean weights, data source).
        samples: the calibration points behind the fits (for reports).
    """

    codec: CodecInfo
    backbone: BackboneInfo
    tasks: tuple[str, ...]
    loss_rate: LossRateModel
    rate_phi: dict[str, RatePhiModel]
    fast_predictor: FastPredictor | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[list[Any]]] = field(default_factory=dict)
    k: int = K_FPN
    weight_gains: tuple[GainPoint, ...] = ()

    def __post_init__(self) -> None:
        rates = [point.rate for point in self.weight_gains]
        if any(not (math.isfinite(r) and r > 0) for r in rates):
            raise ValueError(f"weight_gains rates must be positive and finite, got {rates}")
        if rates != sorted(set(rates)):
            raise ValueError(f"weight_gains must be in increasing rate, each rate once, got {rates}")
        for point in self.weight_gains:
            unknown = sorted(set(point.gains) - set(self.rate_phi))
            if unknown:
                raise ValueError(f"weight_gains names scales {unknown} the profile does not have {list(self.rate_phi)}")
            bad = {n: g for n, g in point.gains.items() if not (math.isfinite(g) and g > 0)}
            if bad:
                raise ValueError(f"weight_gains must be positive and finite, got {bad}")

    @property
    def scales(self) -> tuple[str, ...]:
        return tuple(self.rate_phi)

    def scale_models(self) -> dict[str, ScaleRateModel]:
        """Per scale: Eq. 3's alpha/beta (own fit, else global) and the feasible rates of Eq. 7's model."""
        out = {}
        for name, model in self.rate_phi.items():
            fit = self.loss_rate.for_scale(name)
            out[name] = ScaleRateModel(fit.alpha, fit.beta, model.r_min, model.r_max)
        return out

    def gains_at(self, rate: float) -> dict[str, float]:
        """Each scale's weight gain at a budget of ``rate`` payload bits per position of the finest scale.

        Between tuned budgets ``log gain`` is linear in ``log rate``; outside them the nearest one holds.
        """
        points = self.weight_gains
        if not points:
            return dict.fromkeys(self.scales, 1.0)
        rates = np.log([p.rate for p in points])
        where = float(np.log(rate)) if rate > 0 else -math.inf
        return {n: float(np.exp(np.interp(where, rates, np.log([p.gains.get(n, 1.0) for p in points]))))
                for n in self.scales}

    def gained_weights(self, weights: Mapping[str, float], rate: float) -> dict[str, float]:
        """MFIP weights times :meth:`gains_at` ``rate``, normalised to sum 1 (the weights allocation uses)."""
        gains = self.gains_at(rate)
        gained = {n: float(w) * gains.get(n, 1.0) for n, w in weights.items()}
        total = sum(gained.values())
        return {n: w / total for n, w in gained.items()} if total > 0 else gained

    def check_compatible(self, codec: FeatureCodec, backbone_fingerprint: str) -> None:
        """Raise :class:`FingerprintMismatchError` if ``codec`` or the backbone is not what was calibrated."""
        problems = []
        if codec.name != self.codec.name or codec.fingerprint != self.codec.fingerprint:
            problems.append(f"codec {codec.name} ({codec.fingerprint}) but the profile was calibrated for "
                            f"{self.codec.name} ({self.codec.fingerprint})")
        if backbone_fingerprint != self.backbone.fingerprint:
            problems.append(f"backbone {backbone_fingerprint} but the profile was calibrated for "
                            f"{self.backbone.fingerprint} (weights {self.backbone.weights})")
        if problems:
            raise FingerprintMismatchError("MFIBA profile does not match: " + "; ".join(problems)
                                           + "; run `fpnlink mfiba calibrate` for this codec and backbone")

    # ---------------------------------------------------------------------------------------- to JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "codec": {"name": self.codec.name, "fingerprint": self.codec.fingerprint,
                      "phi_range": list(self.codec.phi_range), "phi_grid": self.codec.phi_grid,
                      "starve_phi": self.codec.starve_phi},
            "backbone": {"weights": self.backbone.weights, "fingerprint": self.backbone.fingerprint,
                         "min_size": self.backbone.min_size, "max_size": self.backbone.max_size},
            "tasks": list(self.tasks),
            "k": self.k,
            "rate_unit": RATE_UNIT,
            "loss_rate": {
                "global": _cauchy_dict(self.loss_rate.global_fit),
                "scales": {n: _cauchy_dict(f) for n, f in self.loss_rate.scales.items()},
                "quadratic": {n: {"coef": list(f.coef), **_quality_dict(f.quality)}
                              for n, f in self.loss_rate.quadratic.items()},
            },
            "rate_phi": {n: _rate_phi_dict(m) for n, m in self.rate_phi.items()},
            "fast_predictor": None if self.fast_predictor is None else self.fast_predictor.to_params(),
            "weight_gains": [{"rate": p.rate, "gains": dict(p.gains)} for p in self.weight_gains],
            "calibration": self.calibration,
            "samples": self.samples,
        }

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (atomically: a crash never leaves half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        partial.replace(path)
        return path


def _quality_dict(q: FitQuality | None) -> dict[str, Any]:
    q = q or FitQuality(None, 0.0, 0)
    return {"cc": q.cc, "rmse": q.rmse, "n": q.n}


def _cauchy_dict(fit: CauchyFit) -> dict[str, Any]:
    return {"alpha": fit.alpha, "beta": fit.beta, **_quality_dict(fit.quality)}


def _rate_phi_dict(model: RatePhiModel) -> dict[str, Any]:
    line = _quality_dict(model.line_quality)
    return {"kind": model.kind, "a": model.a, "b": model.b, "knots_phi": list(model.knots_phi),
            "knots_rate": list(model.knots_rate), **_quality_dict(model.quality),
            "line_cc": line["cc"], "line_rmse": line["rmse"]}


# -------------------------------------------------------------------------------------------- from JSON


def _get(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"profile field {where or 'root'} must be an object, got {type(obj).__name__}")
    if key not in obj:
        raise ValueError(f"profile field {where + '.' if where else ''}{key} is missing")
    return obj[key]


def _num(obj: Any, key: str, where: str, positive: bool = False, optional: bool = False) -> float | None:
    value = _get(obj, key, where)
    name = f"{where}.{key}" if where else key
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"profile field {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"profile field {name} must be positive, got {value!r}")
    return float(value)


def _str(obj: Any, key: str, where: str) -> str:
    value = _get(obj, key, where)
    if not isinstance(value, str) or not value:
        raise ValueError(f"profile field {where + '.' if where else ''}{key} must be a non-empty string, got {value!r}")
    return value


def _quality(obj: Any, where: str) -> FitQuality:
    cc = _num(obj, "cc", where, optional=True)
    if cc is not None and not -1.0 - 1e-9 <= cc <= 1.0 + 1e-9:
        raise ValueError(f"profile field {where}.cc must lie in [-1, 1], got {cc}")
    rmse = _num(obj, "rmse", where)
    assert rmse is not None
    if rmse < 0:
        raise ValueError(f"profile field {where}.rmse must be non-negative, got {rmse}")
    n = _get(obj, "n", where)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"profile field {where}.n must be a non-negative integer, got {n!r}")
    return FitQuality(cc, rmse, n)


def _cauchy(obj: Any, where: str) -> CauchyFit:
    alpha = _num(obj, "alpha", where, positive=True)
    beta = _num(obj, "beta", where, positive=True)
    assert alpha is not None and beta is not None
    return CauchyFit(alpha, beta, _quality(obj, where))


def _rate_phi(obj: Any, where: str, phi_range: tuple[float, float]) -> RatePhiModel:
    kind = _str(obj, "kind", where)
    if kind not in ("linear", "pchip"):
        raise ValueError(f"profile field {where}.kind must be 'linear' or 'pchip', got {kind!r}")
    a = _num(obj, "a", where, positive=True)
    b = _num(obj, "b", where)
    knots = []
    for key in ("knots_phi", "knots_rate"):
        value = _get(obj, key, where)
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
            raise ValueError(f"profile field {where}.{key} must be a list of numbers")
        knots.append(tuple(float(v) for v in value))
    line = _quality({"cc": _get(obj, "line_cc", where), "rmse": _get(obj, "line_rmse", where),
                     "n": _get(obj, "n", where)}, where + ".line")
    try:
        assert a is not None and b is not None
        return RatePhiModel(kind, a, b, phi_range, knots[0], knots[1],  # type: ignore[arg-type]
                            _quality(obj, where), line)
    except ValueError as exc:
        raise ValueError(f"profile field {where}: {exc}") from None


def profile_from_dict(obj: Any) -> Profile:
    """Validate and build a :class:`Profile`; ``ValueError`` names the first bad field."""
    if not isinstance(obj, dict):
        raise ValueError(f"a profile must be a JSON object, got {type(obj).__name__}")
    fmt = obj.get("format")
    if fmt != PROFILE_FORMAT:
        raise ValueError(f"profile field format must be {PROFILE_FORMAT!r}, got {fmt!r}")
    codec = _get(obj, "codec", "")
    phi_range_raw = _get(codec, "phi_range", "codec")
    if (not isinstance(phi_range_raw, list) or len(phi_range_raw) != 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in phi_range_raw)
            or phi_range_raw[0] >= phi_range_raw[1]):
        raise ValueError(f"profile field codec.phi_range must be [low, high] with low < high, got {phi_range_raw!r}")
    phi_range = (float(phi_range_raw[0]), float(phi_range_raw[1]))
    grid = _str(codec, "phi_grid", "codec")
    if grid not in PHI_GRIDS:
        raise ValueError(f"profile field codec.phi_grid must be one of {list(PHI_GRIDS)}, got {grid!r}")
    starve_phi = _num(codec, "starve_phi", "codec", optional=True) if "starve_phi" in codec else None
    if starve_phi is not None and not phi_range[0] <= starve_phi < phi_range[1] - STARVE_MARGIN:
        raise ValueError(f"profile field codec.starve_phi must lie at the low end of codec.phi_range "
                         f"{list(phi_range)}, got {starve_phi}")
    codec_info = CodecInfo(_str(codec, "name", "codec"), _str(codec, "fingerprint", "codec"), phi_range, grid,
                           starve_phi)
    backbone = _get(obj, "backbone", "")
    sizes = []
    for key in ("min_size", "max_size"):
        value = _get(backbone, key, "backbone")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"profile field backbone.{key} must be a positive integer, got {value!r}")
        sizes.append(value)
    backbone_info = BackboneInfo(_str(backbone, "weights", "backbone"), _str(backbone, "fingerprint", "backbone"),
                                 sizes[0], sizes[1])
    tasks = _get(obj, "tasks", "")
    if not isinstance(tasks, list) or not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"profile field tasks must be a non-empty subset of {list(TASKS)}, got {tasks!r}")
    k = _get(obj, "k", "")
    if k != K_FPN:
        raise ValueError(f"profile field k must be {K_FPN} (ResNet50-FPN), got {k!r}")
    if obj.get("rate_unit") != RATE_UNIT:
        raise ValueError(f"profile field rate_unit must be {RATE_UNIT!r}, got {obj.get('rate_unit')!r}")

    loss_rate = _get(obj, "loss_rate", "")
    global_fit = _cauchy(_get(loss_rate, "global", "loss_rate"), "loss_rate.global")
    scales_raw = _get(loss_rate, "scales", "loss_rate")
    if not isinstance(scales_raw, dict):
        raise ValueError("profile field loss_rate.scales must be an object")
    scale_fits = {n: _cauchy(v, f"loss_rate.scales.{n}") for n, v in scales_raw.items()}
    quadratic_raw = _get(loss_rate, "quadratic", "loss_rate")
    if not isinstance(quadratic_raw, dict):
        raise ValueError("profile field loss_rate.quadratic must be an object")
    quadratic = {}
    for n, v in quadratic_raw.items():
        coef = _get(v, "coef", f"loss_rate.quadratic.{n}")
        if not isinstance(coef, list) or len(coef) != 3 or not all(
                isinstance(c, (int, float)) and math.isfinite(c) for c in coef):
            raise ValueError(f"profile field loss_rate.quadratic.{n}.coef must be 3 finite numbers, got {coef!r}")
        c0, c1, c2 = (float(c) for c in coef)
        quadratic[n] = QuadraticFit((c0, c1, c2), _quality(v, f"loss_rate.quadratic.{n}"))

    rate_phi_raw = _get(obj, "rate_phi", "")
    if not isinstance(rate_phi_raw, dict) or not rate_phi_raw:
        raise ValueError("profile field rate_phi must be a non-empty object of scales")
    rate_phi = {n: _rate_phi(v, f"rate_phi.{n}", codec_info.coded_phi_range) for n, v in rate_phi_raw.items()}
    unknown = sorted(set(scale_fits) - set(rate_phi))
    if unknown:
        raise ValueError(f"profile field loss_rate.scales names scales {unknown} that rate_phi lacks")

    predictor_raw = _get(obj, "fast_predictor", "")
    predictor = (None if predictor_raw is None
                 else FastPredictor.from_params(predictor_raw, "profile field fast_predictor"))
    if predictor is not None and predictor.scales != tuple(rate_phi):
        raise ValueError(f"profile field fast_predictor.scales {list(predictor.scales)} differ from rate_phi's "
                         f"{list(rate_phi)}")
    gains_raw = obj.get("weight_gains", [])
    if not isinstance(gains_raw, list):
        raise ValueError("profile field weight_gains must be a list of {rate, gains}")
    gain_points = []
    for i, point in enumerate(gains_raw):
        where = f"weight_gains[{i}]"
        rate = _num(point, "rate", where, positive=True)
        gains = _get(point, "gains", where)
        if not isinstance(gains, dict):
            raise ValueError(f"profile field {where}.gains must be an object of scales")
        gain_points.append(GainPoint(rate, {n: _num(gains, n, f"{where}.gains", positive=True) for n in gains}))
    calibration = obj.get("calibration", {})
    samples = obj.get("samples", {})
    if not isinstance(calibration, dict) or not isinstance(samples, dict):
        raise ValueError("profile fields calibration and samples must be objects")
    return Profile(codec_info, backbone_info, tuple(tasks), LossRateModel(global_fit, scale_fits, quadratic),
                   rate_phi, predictor, calibration, samples, k, tuple(gain_points))  # type: ignore[arg-type]


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; ``ValueError`` for a missing, unreadable or invalid one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no MFIBA profile at {path} (make one with `fpnlink mfiba calibrate`)")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read MFIBA profile {path}: {exc}") from None
    try:
        return profile_from_dict(obj)
    except ValueError as exc:
        raise ValueError(f"invalid MFIBA profile {path}: {exc}") from None


def shipped_profiles(folder: Path = SHIPPED_PROFILES) -> list[Profile]:
    """Every profile shipped in ``folder``."""
    return [load_profile(path) for path in sorted(folder.glob("*.json"))]


def shipped_profile(codec: FeatureCodec, backbone_fingerprint: str, folder: Path = SHIPPED_PROFILES) -> Profile | None:
    """The shipped profile calibrated for exactly this codec and backbone, if there is one."""
    for profile in shipped_profiles(folder):
        try:
            profile.check_compatible(codec, backbone_fingerprint)
        except FingerprintMismatchError:
            continue
        return profile
    return None
