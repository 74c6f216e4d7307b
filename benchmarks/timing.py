"""Repeated measurements, interleaved so that a burst of other work on a shared
machine hits every variant alike rather than the one that happened to run then."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Timings:
    """Seconds of each repeat of one variant; the best repeat is the one quoted,
    since interference from other processes only ever slows a run down."""

    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def spread(self) -> float:
        """Slowest over fastest repeat: how noisy the machine was for this variant."""
        return max(self.seconds) / min(self.seconds)


def interleaved(variants: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, Timings]:
    """Run every variant once per round, in turn; each call returns its own
    elapsed seconds (so it can leave setup it does not want timed out of them)."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    timings = {name: Timings() for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            timings[name].seconds.append(run())
    return timings


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")
