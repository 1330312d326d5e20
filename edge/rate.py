"""Link-adaptive rate: MFIBA's per-frame budget from the link's rate and the source's frame rate.

``bits per frame = kbps * 1000 / fps``. With a fixed ``--max-kbps R`` the rate is ``R``. In ``auto`` mode the
rate follows the link: while the spool holds more than ``backlog_frames`` frames (the link falls behind the
source) it drops to ``headroom`` times the throughput the link achieves, and at most by ``1 - cut`` per frame
below its previous value; while the spool stays short it probes upwards by ``probe`` per frame, never above
``R`` when one is given. The spool therefore stays bounded at the source's frame rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..shared.mfiba import BudgetedCoder
from ..shared.mfiba.allocate import Budget

AUTO = "auto"
START_KBPS = 1000.0
MIN_KBPS = 8.0


@dataclass
class LinkRate:
    """The rate decision (no I/O): :meth:`update` once per frame.

    Args:
        max_kbps: the cap (a fixed rate without ``auto``); None for auto without a cap.
        auto: follow the measured link.
        backlog_frames: spooled frames beyond which the link counts as falling behind.
        headroom: share of the measured throughput a falling-behind link gets.
        probe: relative increase per frame while the link keeps up.
        cut: most relative decrease per frame.

    Attributes:
        kbps: the rate in force.
    """

    max_kbps: float | None
    auto: bool
    backlog_frames: int = 4
    headroom: float = 0.85
    probe: float = 0.05
    cut: float = 0.3
    kbps: float = 0.0

    def __post_init__(self) -> None:
        if self.max_kbps is None and not self.auto:
            raise ValueError("give a rate in kbps, or auto")
        if self.max_kbps is not None and not self.max_kbps > 0:
            raise ValueError(f"max_kbps must be > 0, got {self.max_kbps}")
        self.kbps = self.max_kbps if self.max_kbps is not None else START_KBPS

    def update(self, link_kbps: float, spooled_frames: int) -> float:
        """The rate for the next frame, given the link's measured throughput and the spool's depth."""
        if not self.auto:
            return self.kbps
        if spooled_frames > self.backlog_frames and link_kbps > 0:
            self.kbps = max(min(self.kbps, self.headroom * link_kbps), self.kbps * (1 - self.cut))
        elif spooled_frames <= self.backlog_frames // 2:
            self.kbps *= 1 + self.probe
        cap = self.max_kbps if self.max_kbps is not None else float("inf")
        self.kbps = min(max(self.kbps, MIN_KBPS), cap)
        return self.kbps


def parse_max_kbps(text: str) -> tuple[float | None, bool]:
    """``"800"`` -> (800, False); ``"auto"`` -> (None, True); ``"auto:800"`` -> (800, True)."""
    head, _, cap = text.partition(":")
    try:
        if head == AUTO:
            return (float(cap) if cap else None), True
        return float(text), False
    except ValueError:
        raise ValueError(f"max_kbps must be a number of kbps, auto or auto:KBPS, got {text!r}") from None


class LinkBudget:
    """Applies a :class:`LinkRate` to a budgeted coder before every frame (the stream loop's budget hook).

    Args:
        coder: MFIBA's coder; its budget is replaced per frame.
        rate: the decision.
        fps: the source's frame rate; measured from the frames encoded so far when None.
    """

    def __init__(self, coder: BudgetedCoder, rate: LinkRate, fps: float | None) -> None:
        self.coder, self.rate, self.fps = coder, rate, fps

    def __call__(self, link_kbps: float, spooled_frames: int, measured_fps: float) -> None:
        kbps = self.rate.update(link_kbps, spooled_frames)
        fps = self.fps or max(measured_fps, 0.1)
        self.coder.budget = Budget("bits", kbps * 1000.0 / fps, None, f"{kbps:.0f}kbps@{fps:.1f}fps")
