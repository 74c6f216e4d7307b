"""The working resolution: the shape an image of a given shape is stored, trained
and predicted at (params: preprocess.resize). Preprocess and predict share it, so
a new photo is brought to the scale the model learned from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resize:
    by: str  # shorter_side | longer_side | factor | exact
    to: int | float | list[int]

    def shape_for(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) at the working resolution; never below one pixel."""
        if self.by == "exact":
            return int(self.to[0]), int(self.to[1])
        if self.by == "factor":
            scale = float(self.to)
        else:
            side = min(height, width) if self.by == "shorter_side" else max(height, width)
            scale = float(self.to) / side
        return max(1, round(height * scale)), max(1, round(width * scale))

    def as_dict(self) -> dict:
        return {"by": self.by, "to": self.to}
