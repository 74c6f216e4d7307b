"""The download stage's output: image/mask files plus a manifest.

Every source writes the same layout, so preprocess needs to know nothing about
where the data came from:

    data/raw/manifest.json   {"dataset", "classes", "ignore_index", "pairs": [...], "problems": [...]}
    data/raw/...             the files each pair names, relative to data/raw

Masks hold class indices (0..len(classes)-1) or IGNORE_INDEX. A pair may carry a
"split" (train/val/test) when the dataset has an official one. `problems` lists
the files a source found unusable (a mask without an image, an unreadable file,
mask values that are no class): preprocess reports them with its own findings
and applies preprocess.on_bad_sample to all of them alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from segpipe.atomic import read_json, write_json
from segpipe.data import IGNORE_INDEX
from segpipe.errors import SegpipeError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Pair:
    id: str
    image: str
    mask: str
    split: str | None = None


@dataclass(frozen=True)
class Problem:
    """A sample a source or preprocess could not use, and why."""

    id: str
    image: str | None
    mask: str | None
    reason: str
    # Mask values that are no class (for a message that names the fix shared by many files).
    unknown_values: list | None = None


@dataclass(frozen=True)
class RawDataset:
    root: Path
    dataset: str
    classes: list[str]
    pairs: list[Pair]
    ignore_index: int = IGNORE_INDEX
    problems: list[Problem] = field(default_factory=list)

    def write_manifest(self) -> None:
        write_json(
            self.root / MANIFEST,
            {
                "dataset": self.dataset,
                "classes": self.classes,
                "ignore_index": self.ignore_index,
                "pairs": [asdict(p) for p in self.pairs],
                "problems": [asdict(p) for p in self.problems],
            },
        )

    @classmethod
    def read(cls, root: str | Path) -> "RawDataset":
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise SegpipeError(f"{path} not found; run the download stage first (dvc repro download)")
        manifest = read_json(path)
        return cls(
            root=root,
            dataset=manifest["dataset"],
            classes=list(manifest["classes"]),
            pairs=[Pair(**p) for p in manifest["pairs"]],
            ignore_index=manifest["ignore_index"],
            problems=[Problem(**p) for p in manifest.get("problems", [])],
        )
