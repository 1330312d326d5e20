"""MFIBA: multiscale feature importance-based bit allocation (Liu et al., ACM TOMM 2024; paper 002).

::

    offline:  images ──> calibrate ──> Profile (Eq. 3 loss-rate, Eq. 7 rate-phi, fast MFIP predictor)
    online:   P2..P5 ──> MFIP weights ──> allocate (Eq. 6) ──> phi (Eq. 8) ──> encode ──> measure
              ──> correct once (closed loop)

Depends on ``shared.model`` and ``shared.codec``; neither depends on it. Rates are bits per spatial
position of each scale; losses are ``1 - AP`` against the lossless-feature output.
"""

from .allocate import (
    K_FPN, Allocation, Budget, InfeasibleBudgetError, ScaleRateModel, allocate, closed_form_rates, model_loss,
    parse_budget,
)
from .calibration import calibrate, detect_phi_grid
from .control import BudgetedCoder, ControlResult, RateController, RateDecision
from .fast_predictor import FastPredictor, feature_stats, train_fast_predictor
from .importance import (
    FullMfip, Importance, MfipMode, make_importance, normalise_losses, parse_mfip_mode, quality_levels,
)
from .loss_rate import CauchyFit, FitQuality, LossRateModel, QuadraticFit, fit_cauchy, fit_loss_rate, fit_quadratic
from .profile import (
    PROFILE_FORMAT, SHIPPED_PROFILES, BackboneInfo, CodecInfo, GainPoint, Profile, load_profile, profile_from_dict,
    shipped_profile, shipped_profiles,
)
from .rate_phi import RatePhiModel, fit_rate_phi
from .task_loss import pseudo_ap, task_loss

__all__ = [
    "K_FPN", "PROFILE_FORMAT", "SHIPPED_PROFILES", "Allocation", "BackboneInfo", "Budget", "BudgetedCoder", "CauchyFit", "CodecInfo",
    "ControlResult", "FastPredictor", "FitQuality", "FullMfip", "GainPoint", "Importance", "InfeasibleBudgetError",
    "LossRateModel", "MfipMode", "Profile", "QuadraticFit", "RateController", "RateDecision", "RatePhiModel",
    "ScaleRateModel",
    "allocate", "calibrate", "closed_form_rates", "detect_phi_grid", "feature_stats", "fit_cauchy",
    "fit_loss_rate", "fit_quadratic", "fit_rate_phi", "load_profile", "make_importance", "model_loss",
    "normalise_losses", "parse_budget", "parse_mfip_mode", "profile_from_dict", "pseudo_ap", "quality_levels",
    "shipped_profile", "shipped_profiles", "task_loss", "train_fast_predictor",
]
