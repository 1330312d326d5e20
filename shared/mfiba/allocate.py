"""Per-scale bit allocation under a frame budget (MFIBA Eqs. 5-6), and budget strings.

Substituting the loss-rate model (Eq. 3, :mod:`.loss_rate`) into the Lagrangian of Eq. 5::

    J = sum_i w_i alpha_i R_i^(-beta_i) + lambda' * sum_i R_i / k^i              (Eq. 5, k = 4)

    dJ/dR_i = 0   =>   R_i = (w_i alpha_i beta_i / (lambda' / k^i)) ^ (1 / (beta_i + 1))   (Eq. 6)

Units: ``R_i`` is in bits per spatial position of scale ``i`` (``S_i = h_i * w_i`` positions). The FPN's
padded input is a multiple of 32, so ``S_i = S_0 / k^i`` exactly and a frame costs
``sum_i S_i R_i = S_0 * sum_i R_i / k^i`` bits: ``lambda' = lambda * S_0`` as in the paper.

:func:`allocate` finds ``lambda'`` by bisection in ``log lambda'`` so the planned bits meet the budget.
Each ``R_i`` is clamped to the codec's feasible range ``[R_i(phi_min), R_i(phi_max)]`` INSIDE the
bisection: a clamped scale keeps its bound and the free scales share the remaining bits through one
common ``lambda'``. That is exactly the fixed point of "clamp, give the freed bits back, re-solve the
unclamped scales" (the KKT conditions of the box-constrained convex problem), found in one search.

Budgets that cannot be met:

- below the sum of the minima: :class:`InfeasibleBudgetError` (a ``ValueError``) by default; with
  ``on_infeasible="clamp"`` every scale gets its minimum and the allocation says ``feasible=False``
  (a stream keeps going at the lowest rate the codec has, and the caller reports it);
- above the sum of the maxima: every scale gets its maximum and ``saturated=True`` (never an error:
  the codec simply cannot spend more).

Codecs with a *starve* level (``FeatureCodec.starve_phi``: a header only, the scale rebuilt from the
coarser ones) have a second, discrete choice per scale: a rate in ``[R_min, R_max]`` or the starve
level's fixed bits, with nothing in between. Given ``starve_bits``, :func:`allocate` solves Eq. 6 over
the coded scales of every subset of starved scales (``2^n``, 16 on an FPN) and keeps the feasible
plan of least Eq. 3 loss, a starved scale counted at its starve rate. So a budget below what coding
every scale costs starves the scales that matter least instead of planning rates the codec cannot
reach.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

K_FPN = 4
"""Ratio of positions between consecutive FPN scales (Eq. 5's ``k``)."""
_BISECTION_STEPS = 200
_REL_TOL = 1e-13

# ---------------------------------------------------------------------------------------------- budgets

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?"
_BPP = re.compile(rf"^{_NUMBER}\s*bpp$")
_SIZE = re.compile(rf"^{_NUMBER}\s*(bits|bit|b|kbit|Mbit|Gbit|B|kB|KB|MB|GB|KiB|MiB|GiB)$")
_RATE = re.compile(rf"^{_NUMBER}\s*(bps|kbps|Kbps|Mbps|Gbps)\s*@\s*{_NUMBER}\s*fps$")
SIZE_UNITS: dict[str, float] = {
    "b": 1, "bit": 1, "bits": 1, "kbit": 1e3, "Mbit": 1e6, "Gbit": 1e9,
    "B": 8, "kB": 8e3, "KB": 8e3, "MB": 8e6, "GB": 8e9, "KiB": 8 * 1024, "MiB": 8 * 1024**2, "GiB": 8 * 1024**3,
}
"""Bits per unit. Lower-case ``b`` is bits, upper-case ``B`` bytes; ``KB``/``MB`` are decimal (SI), ``KiB`` binary."""
RATE_UNITS: dict[str, float] = {"bps": 1, "kbps": 1e3, "Kbps": 1e3, "Mbps": 1e6, "Gbps": 1e9}
BUDGET_FORMS = "'0.05bpp' (bits per input pixel), '30KB' / '240kbit' / '12000b' (per frame), '2Mbps@10fps'"


def _number(mantissa: str, exponent: str | None) -> float:
    return float(f"{mantissa}e{exponent}" if exponent else mantissa)  # 1e999 -> inf, refused below


@dataclass(frozen=True)
class Budget:
    """A frame budget as given: per input pixel, per frame, or a bitrate at a frame rate.

    Attributes:
        kind: ``bpp`` (bits per ORIGINAL input pixel), ``bits`` (per frame) or ``bitrate``.
        value: bits per pixel, bits per frame, or bits per second.
        fps: frames per second (``bitrate`` only).
        text: the string it was parsed from.
    """

    kind: Literal["bpp", "bits", "bitrate"]
    value: float
    fps: float | None = None
    text: str = ""

    def bits_per_frame(self, original_size: tuple[int, int]) -> float:
        """Bits one frame may use (every frame byte counted) for an input image of ``(H, W)`` pixels."""
        if self.kind == "bpp":
            height, width = original_size
            return self.value * height * width
        if self.kind == "bitrate":
            assert self.fps is not None
            return self.value / self.fps
        return self.value


def parse_budget(text: str) -> Budget:
    """Parse ``'0.05bpp'``, ``'30KB'`` (also ``kbit``, ``b``, ``KiB``...) or ``'2Mbps@10fps'``.

    Raises:
        ValueError: anything else, or a value that is not positive and finite; the message lists the forms.
    """
    if not isinstance(text, str):
        raise ValueError(f"budget must be a string such as {BUDGET_FORMS}, got {type(text).__name__}")
    stripped = text.strip()
    if match := _BPP.match(stripped):
        budget = Budget("bpp", _number(match.group(1), match.group(2)), None, text)
    elif match := _SIZE.match(stripped):
        budget = Budget("bits", _number(match.group(1), match.group(2)) * SIZE_UNITS[match.group(3)], None, text)
    elif match := _RATE.match(stripped):
        bps = _number(match.group(1), match.group(2)) * RATE_UNITS[match.group(3)]
        budget = Budget("bitrate", bps, _number(match.group(4), match.group(5)), text)
    else:
        raise ValueError(f"cannot parse budget {text!r}; use one of {BUDGET_FORMS}")
    if not (math.isfinite(budget.value) and budget.value > 0):
        raise ValueError(f"budget {text!r} must be positive and finite")
    if budget.fps is not None and not (math.isfinite(budget.fps) and budget.fps > 0):
        raise ValueError(f"budget {text!r}: the frame rate must be positive and finite")
    return budget


# ---------------------------------------------------------------------------------------------- allocation


class InfeasibleBudgetError(ValueError):
    """The budget is below what the codec's lowest rate on every scale costs."""


@dataclass(frozen=True)
class ScaleRateModel:
    """What allocation needs of one scale: Eq. 3's ``alpha``, ``beta`` and the feasible rate range.

    Rates are bits per spatial position of the scale; ``r_min``/``r_max`` are ``R(phi_min)``/``R(phi_max)``.
    """

    alpha: float
    beta: float
    r_min: float
    r_max: float

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "r_min", "r_max"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive and finite, got {value}")
        if self.r_min > self.r_max:
            raise ValueError(f"r_min {self.r_min} exceeds r_max {self.r_max}")


@dataclass(frozen=True)
class Allocation:
    """One frame's plan.

    Attributes:
        rates: scale -> planned bits per position.
        bits: scale -> planned bits (``rates * positions``).
        lam: the ``lambda'`` found (``inf`` when every scale sits at its minimum, 0 at its maximum).
        clamped: scale -> ``'min'`` or ``'max'`` for scales held at a bound, ``'starve'`` for starved ones.
        feasible: False when the budget was below the minimum and clamped (``on_infeasible='clamp'``).
        saturated: True when the budget exceeds what the codec can spend.
        budget_bits: the budget the plan was made for.
    """

    rates: dict[str, float]
    bits: dict[str, float]
    lam: float
    clamped: dict[str, str] = field(default_factory=dict)
    feasible: bool = True
    saturated: bool = False
    budget_bits: float = 0.0

    @property
    def total_bits(self) -> float:
        return float(sum(self.bits.values()))


def closed_form_rates(weights: Sequence[float], alphas: Sequence[float], betas: Sequence[float], lam: float,
                      k: float = K_FPN) -> np.ndarray:
    """Eq. 6 for scales ``i = 0..n-1``: ``R_i = (w_i alpha_i beta_i / (lam / k^i)) ^ (1 / (beta_i + 1))``."""
    w, a, b = (np.asarray(v, dtype=np.float64) for v in (weights, alphas, betas))
    costs = float(k) ** -np.arange(len(w), dtype=np.float64)
    return _rates(w, a, b, costs, lam)


def _rates(w: np.ndarray, a: np.ndarray, b: np.ndarray, costs: np.ndarray, lam: float) -> np.ndarray:
    """Eq. 6 with a general cost per unit rate (``costs_i = S_i / S_0``, ``= 1/k^i`` on an FPN)."""
    with np.errstate(divide="ignore", over="ignore"):
        return (w * a * b / (lam * costs)) ** (1.0 / (b + 1.0))


def allocate(
    weights: Mapping[str, float],
    models: Mapping[str, ScaleRateModel],
    positions: Mapping[str, int],
    budget_bits: float,
    on_infeasible: Literal["raise", "clamp"] = "raise",
    starve_bits: Mapping[str, float] | None = None,
) -> Allocation:
    """Split ``budget_bits`` over scales by Eq. 6, with ``lambda'`` from bisection and feasible-range clamps.

    Args:
        weights: scale -> importance ``w_i`` (non-negative; normalised here).
        models: scale -> :class:`ScaleRateModel` (``alpha_i``, ``beta_i``, feasible rate range).
        positions: scale -> ``S_i`` spatial positions; ``costs_i = S_i / S_0`` (``1/k^i`` on an FPN).
        budget_bits: bits the scales' payloads may use in total.
        on_infeasible: ``raise`` (default) or ``clamp`` for a budget below the sum of minima.
        starve_bits: scale -> bits of the scale at the codec's starve level, for codecs that have one;
            every scale may then be starved (see the module docstring). The minimum is then every
            scale at the cheaper of its starve bits and ``S_i R_min``.

    Raises:
        InfeasibleBudgetError: the budget is below the minimum and ``on_infeasible='raise'``.
        ValueError: inconsistent scales, negative weights or a non-positive budget.
    """
    if starve_bits is None:
        return _allocate_coded(weights, models, positions, budget_bits, on_infeasible)
    _check_inputs(weights, models, positions, budget_bits, on_infeasible)
    names = list(weights)
    if set(starve_bits) != set(names) or not all(math.isfinite(v) and v > 0 for v in starve_bits.values()):
        raise ValueError(f"starve_bits must give every scale {names} positive, finite bits, got {dict(starve_bits)}")
    best: Allocation | None = None
    best_loss = math.inf
    for pattern in itertools.product((False, True), repeat=len(names)):
        starved = [n for n, s in zip(names, pattern) if s]
        coded = [n for n, s in zip(names, pattern) if not s]
        remaining = budget_bits - sum(starve_bits[n] for n in starved)
        if remaining < 0 or (coded and sum(weights[n] for n in coded) <= 0):
            continue
        if coded:
            minimum = sum(models[n].r_min * positions[n] for n in coded)
            if remaining < minimum * (1 - _REL_TOL):
                continue
            part = _allocate_coded({n: weights[n] for n in coded}, {n: models[n] for n in coded},
                                   {n: positions[n] for n in coded}, remaining)
        else:
            part = Allocation(rates={}, bits={}, lam=math.inf, budget_bits=float(budget_bits))
        plan = _with_starved(part, names, starved, starve_bits, positions, float(budget_bits))
        loss = model_loss(weights, models, plan.rates)
        if loss < best_loss:
            best, best_loss = plan, loss
    if best is not None:
        return best
    cheapest = [n for n in names if starve_bits[n] <= models[n].r_min * positions[n]]
    minimum = sum(min(starve_bits[n], models[n].r_min * positions[n]) for n in names)
    if on_infeasible == "raise":
        raise InfeasibleBudgetError(
            f"budget of {budget_bits:,.0f} bits is below the {minimum:,.0f} bits the codec needs with every "
            f"scale at its cheapest (starved or at its lowest rate); raise the budget (or clamp with "
            f"on_infeasible='clamp')")
    coded = [n for n in names if n not in cheapest]
    lowest = Allocation(rates={n: models[n].r_min for n in coded},
                        bits={n: models[n].r_min * positions[n] for n in coded},
                        lam=math.inf, clamped=dict.fromkeys(coded, "min"))
    return _with_starved(lowest, names, cheapest, starve_bits, positions, float(budget_bits), feasible=False)


def _check_inputs(weights: Mapping[str, float], models: Mapping[str, ScaleRateModel], positions: Mapping[str, int],
                  budget_bits: float, on_infeasible: str) -> None:
    names = list(weights)
    if not names or set(names) != set(models) or set(names) != set(positions):
        raise ValueError(f"weights, models and positions must name the same scales, got {sorted(weights)}, "
                         f"{sorted(models)}, {sorted(positions)}")
    if not (math.isfinite(budget_bits) and budget_bits > 0):
        raise ValueError(f"budget_bits must be positive and finite, got {budget_bits}")
    if on_infeasible not in ("raise", "clamp"):
        raise ValueError(f"on_infeasible must be 'raise' or 'clamp', got {on_infeasible!r}")
    w = np.array([weights[n] for n in names], dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative and not all zero, got {dict(weights)}")
    if any(positions[n] <= 0 for n in names):
        raise ValueError(f"positions must be positive, got {dict(positions)}")


def _with_starved(part: Allocation, names: Sequence[str], starved: Sequence[str], starve_bits: Mapping[str, float],
                  positions: Mapping[str, int], budget_bits: float, feasible: bool = True) -> Allocation:
    """``part`` (a plan of the coded scales) completed with the starved scales at their fixed bits."""
    rates = {**part.rates, **{n: starve_bits[n] / positions[n] for n in starved}}
    bits = {**part.bits, **{n: float(starve_bits[n]) for n in starved}}
    return Allocation(rates={n: rates[n] for n in names}, bits={n: bits[n] for n in names}, lam=part.lam,
                      clamped={**part.clamped, **dict.fromkeys(starved, "starve")}, feasible=feasible,
                      saturated=part.saturated, budget_bits=budget_bits)


def _allocate_coded(
    weights: Mapping[str, float],
    models: Mapping[str, ScaleRateModel],
    positions: Mapping[str, int],
    budget_bits: float,
    on_infeasible: Literal["raise", "clamp"] = "raise",
) -> Allocation:
    """:func:`allocate` with every scale coded (no starve option)."""
    _check_inputs(weights, models, positions, budget_bits, on_infeasible)
    names = list(weights)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    w = w / w.sum()
    a = np.array([models[n].alpha for n in names])
    b = np.array([models[n].beta for n in names])
    lo = np.array([models[n].r_min for n in names])
    hi = np.array([models[n].r_max for n in names])
    size = np.array([positions[n] for n in names], dtype=np.float64)
    costs = size / size[0]

    def plan(rates: np.ndarray, lam: float, **flags: bool) -> Allocation:
        clamped = {}
        for name, rate, low_rate, high_rate in zip(names, rates, lo, hi):
            if rate <= low_rate * (1 + 1e-12):
                clamped[name] = "min"
            elif rate >= high_rate * (1 - 1e-12):
                clamped[name] = "max"
        return Allocation(rates=dict(zip(names, rates.tolist())), bits=dict(zip(names, (rates * size).tolist())),
                          lam=lam, clamped=clamped, budget_bits=float(budget_bits), **flags)

    minimum, maximum = float((lo * size).sum()), float((hi * size).sum())
    if budget_bits < minimum * (1 - _REL_TOL):
        if on_infeasible == "raise":
            raise InfeasibleBudgetError(
                f"budget of {budget_bits:,.0f} bits is below the {minimum:,.0f} bits the codec needs at its "
                f"lowest rate on every scale; raise the budget (or clamp with on_infeasible='clamp')")
        return plan(lo.copy(), math.inf, feasible=False)
    if budget_bits >= maximum:
        return plan(hi.copy(), 0.0, saturated=budget_bits > maximum * (1 + _REL_TOL))

    def clipped(log_lam: float) -> np.ndarray:
        return np.clip(_rates(w, a, b, costs, math.exp(log_lam)), lo, hi)

    # Bracket: at lam_low every weighted scale sits at its maximum, at lam_high at its minimum.
    active = w > 0
    knees_hi = np.log(w[active] * a[active] * b[active] / costs[active]) - (b[active] + 1) * np.log(hi[active])
    knees_lo = np.log(w[active] * a[active] * b[active] / costs[active]) - (b[active] + 1) * np.log(lo[active])
    low, high = float(knees_hi.min()) - 1.0, float(knees_lo.max()) + 1.0
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        total = float((clipped(mid) * size).sum())
        if abs(total - budget_bits) <= _REL_TOL * budget_bits or high - low < 1e-15:
            break
        if total > budget_bits:
            low = mid
        else:
            high = mid
    rates = clipped(mid)
    return plan(rates, math.exp(mid))


def model_loss(weights: Mapping[str, float], models: Mapping[str, ScaleRateModel],
               rates: Mapping[str, float]) -> float:
    """Eq. 3's predicted task loss ``sum_i w_i alpha_i R_i^(-beta_i)`` of a plan."""
    total = sum(weights.values())
    return float(sum(weights[n] / total * models[n].alpha * rates[n] ** -models[n].beta for n in weights))


def numeric_rates(weights: Mapping[str, float], models: Mapping[str, ScaleRateModel], positions: Mapping[str, int],
                  budget_bits: float | None = None, lam: float | None = None,
                  start: Mapping[str, float] | None = None) -> dict[str, float]:
    """A numerical reference for the closed form (tests and ``fpnlink bench ratecontrol`` only).

    With ``lam``: minimise Eq. 5's ``J`` for that ``lambda'`` with ``scipy.optimize.minimize`` (BFGS over
    ``log R``, unconstrained: compare with :func:`closed_form_rates`). With ``budget_bits``: minimise
    Eq. 3's loss subject to ``sum_i S_i R_i = budget`` and the feasible ranges (SLSQP; compare with
    :func:`allocate`). Analytic gradients throughout.
    """
    from scipy.optimize import minimize

    if (budget_bits is None) == (lam is None):
        raise ValueError("give exactly one of budget_bits and lam")
    names = list(weights)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    w = w / w.sum()
    a = np.array([models[n].alpha for n in names])
    b = np.array([models[n].beta for n in names])
    size = np.array([positions[n] for n in names], dtype=np.float64)
    costs = size / size[0]
    if lam is not None:
        guess = np.log(np.array([start[n] for n in names])) if start else np.zeros(len(names))

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            r = np.exp(x)
            loss = w * a * r**-b
            return float(loss.sum() + lam * (costs * r).sum()), -b * loss + lam * costs * r

        result = minimize(objective, guess, jac=True, method="BFGS", options={"gtol": 1e-13, "maxiter": 10000})
        return dict(zip(names, np.exp(result.x).tolist()))
    assert budget_bits is not None
    lo = np.array([models[n].r_min for n in names])
    hi = np.array([models[n].r_max for n in names])
    # Variables x = log R (rates span decades across scales); the loss is scaled to order one.
    guess = np.log(np.array([start[n] for n in names])) if start else np.log(np.sqrt(lo * hi))
    scale = float((w * a * np.exp(guess) ** -b).sum())

    def loss_fn(x: np.ndarray) -> tuple[float, np.ndarray]:
        terms = w * a * np.exp(-b * x) / scale
        return float(terms.sum()), -b * terms

    constraint = {"type": "eq", "fun": lambda x: float((np.exp(x) * size).sum() / budget_bits - 1.0),
                  "jac": lambda x: np.exp(x) * size / budget_bits}
    result = minimize(loss_fn, guess, jac=True, method="SLSQP", bounds=list(zip(np.log(lo), np.log(hi))),
                      constraints=[constraint], options={"ftol": 1e-16, "maxiter": 1000})
    return dict(zip(names, np.exp(result.x).tolist()))
