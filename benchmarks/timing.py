"""Repeated measurements, interleaved so that a burst of other work on a shared
machine hits every variant alike rather than the one that happened to run then."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# By default the two fastest repeats of a variant must agree this closely before its
# best is trusted; a comparison that resolves smaller differences asks for closer.
AGREEMENT = 0.05


@dataclass
class Timings:
    """Seconds of each repeat of one variant; the best repeat is the one quoted,
    since interference from other processes only ever slows a run down."""

    seconds: list[float] = field(default_factory=list)
    agreement: float = AGREEMENT

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def spread(self) -> float:
        """Slowest over fastest repeat: how noisy the machine was for this variant."""
        return max(self.seconds) / min(self.seconds)

    @property
    def corroborated(self) -> bool:
        """Whether the second-fastest repeat is within `agreement` of the fastest: a best
        that no other repeat comes near may be a fluke, or the others were all disturbed."""
        fastest = sorted(self.seconds)[:2]
        return len(fastest) == 2 and fastest[1] <= fastest[0] * (1 + self.agreement)


def interleaved(variants: dict[str, Callable[[], float]], rounds: int, warmup: int = 1,
                max_rounds: int | None = None, agreement: float = AGREEMENT) -> dict[str, Timings]:
    """Run every variant once per round, in turn; each call returns its own
    elapsed seconds (so it can leave setup it does not want timed out of them).
    After `rounds`, more rounds run (up to `max_rounds`) while some variant's best
    is not corroborated: on a busy machine this waits for quiet moments."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    timings = {name: Timings(agreement=agreement) for name in variants}
    done = 0
    while done < rounds or (done < (max_rounds or rounds) and not all(t.corroborated for t in timings.values())):
        for name, run in variants.items():
            timings[name].seconds.append(run())
        done += 1
    return timings

