"""MFIBA: multiscale feature importance-based bit allocation (Liu et al., ACM TOMM 2024; paper 002).

Depends on ``shared.model`` and ``shared.codec``; neither depends on it. Rates are bits per spatial
position of each scale; losses are ``1 - AP`` against the lossless-feature output.
"""

from .allocate import (
    K_FPN, Allocation, Budget, InfeasibleBudgetError, ScaleRateModel, allocate, closed_form_rates, model_loss,
    parse_budget,
)
from .loss_rate import CauchyFit, FitQuality, LossRateModel, QuadraticFit, fit_cauchy, fit_loss_rate, fit_quadratic
from .rate_phi import RatePhiModel, fit_rate_phi

__all__ = [
    "K_FPN", "Allocation", "Budget", "CauchyFit", "FitQuality", "InfeasibleBudgetError", "LossRateModel",
    "QuadraticFit", "RatePhiModel", "ScaleRateModel", "allocate", "closed_form_rates", "fit_cauchy", "fit_loss_rate",
    "fit_quadratic", "fit_rate_phi", "model_loss", "parse_budget",
]
