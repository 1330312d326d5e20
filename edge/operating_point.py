"""The edge's operating point: a fixed phi on every scale, or an MFIBA budget with its profile.

With neither ``phi`` nor a budget given, the edge runs at :data:`DEFAULT_BUDGET` when a profile is at hand
(``--profile``, or the one shipped for its codec and backbone), and at the codec's default phi otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..shared.codec import FeatureCodec
from ..shared.mfiba import (
    Budget, BudgetedCoder, Profile, RateController, load_profile, make_importance, parse_budget, shipped_profile,
)
from ..shared.model import ModelBundle

DEFAULT_BUDGET = "0.6bpp"
"""The budget ``fpnlink-edge run`` and ``fpnlink demo`` use by default (its measured AP and bytes: NOTES.md)."""
DEFAULT_MFIP = "fast"
"""How scale importance is found under a budget by default (``fpnlink.shared.mfiba.make_importance`` modes)."""
LINK_BUDGET = Budget("bits", 1.0, None, "link")
"""Placeholder budget of ``--max-kbps``: the link sets the real one before every frame."""


@dataclass(frozen=True)
class OperatingPoint:
    """How every frame's rate is chosen.

    Attributes:
        phi: the rate parameter of every scale (fixed rate), or ``None`` under a budget.
        budget: the MFIBA frame budget, or ``None`` at a fixed phi.
        profile: the MFIBA profile behind ``budget``.
        profile_source: where ``profile`` came from (a path, or ``shipped``).
    """

    phi: float | None
    budget: Budget | None = None
    profile: Profile | None = None
    profile_source: str = ""

    def describe(self) -> str:
        if self.budget is None:
            return f"phi {self.phi:g} on every scale"
        return f"budget {self.budget.text}, MFIBA profile {self.profile_source}"


def find_profile(codec: FeatureCodec, backbone_fingerprint: str, path: Path | None) -> tuple[Profile | None, str]:
    """The profile at ``path`` (checked against codec and backbone), else the shipped one for them, and its
    source; ``(None, "")`` when neither exists.

    Raises:
        FingerprintMismatchError: ``path`` was calibrated for another codec or backbone.
        ValueError: ``path`` is not a valid profile.
    """
    if path is not None:
        profile = load_profile(path)
        profile.check_compatible(codec, backbone_fingerprint)
        return profile, str(path)
    profile = shipped_profile(codec, backbone_fingerprint)
    return (profile, "shipped") if profile is not None else (None, "")


def choose_operating_point(codec: FeatureCodec, backbone_fingerprint: str, *, phi: float | None = None,
                           budget: str | None = None, link_adaptive: bool = False,
                           profile_path: Path | None = None) -> OperatingPoint:
    """The operating point the edge's settings ask for (the module docstring gives the defaults).

    Raises:
        ValueError: a budget (or ``link_adaptive``) with no profile for this codec and backbone.
        FingerprintMismatchError: ``profile_path`` was calibrated for another codec or backbone.
    """
    if phi is not None:
        return OperatingPoint(phi=phi)
    profile, source = find_profile(codec, backbone_fingerprint, profile_path)
    if budget is None and not link_adaptive:
        if profile is None:
            return OperatingPoint(phi=codec.default_phi)
        budget = DEFAULT_BUDGET
    if profile is None:
        raise ValueError(f"no MFIBA profile ships for codec {codec.name} ({codec.fingerprint}) on backbone "
                         f"{backbone_fingerprint}; calibrate one with `fpnlink mfiba calibrate` and give --profile")
    parsed = LINK_BUDGET if budget is None else parse_budget(budget)
    return OperatingPoint(phi=None, budget=parsed, profile=profile, profile_source=source)


def budgeted_coder(point: OperatingPoint, codec: FeatureCodec, mfip: str, tasks: Sequence[str],
                   bundle: ModelBundle | None = None) -> BudgetedCoder:
    """MFIP (``mfip`` mode; ``full`` needs ``bundle``) and rate control for a budgeted operating point.

    Raises:
        ValueError: the operating point has no budget, or the MFIP mode lacks what it needs.
    """
    if point.budget is None or point.profile is None:
        raise ValueError("a fixed-phi operating point has no rate control")
    importance = make_importance(mfip, bundle=bundle, codec=codec, tasks=tasks,
                                 predictor=point.profile.fast_predictor)
    return BudgetedCoder(RateController(codec, point.profile), importance, point.budget)
