"""What every benchmark shares: timing medians, the machine description, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Run ``fn`` once; return its value and the wall time in milliseconds."""
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1000


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    partial.replace(path)


def comma_choices(known: Collection[str]) -> Callable[[str], list[str]]:
    """An argparse ``type``: a non-empty comma-separated subset of ``known``, as a list in the given order."""
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = sorted(set(names) - set(known))
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown} in {text!r}; known: {sorted(known)}")
        return list(dict.fromkeys(names))
    return parse
