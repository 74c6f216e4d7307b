"""Is run B better than run A, or is the difference noise? The paired bootstrap.

Two runs scored on the same test images are paired samples: an image that is hard
for one model is hard for the other, so the difference of their scores varies far
less from one sample of images to another than either score does. Each resample
draws the same images for both runs, scores each run from its summed confusion
matrices (intervals.resampled_scores, as the report's own intervals are scored), and
keeps B - A; the central 95% of those differences is the interval. An interval
above 0 says better, below 0 worse, and one that holds 0 says no detectable
difference.

Groups of runs that differ only in their seed compare the same way, a group scoring
as the mean of its runs: each resample also draws the seeds of each group with
replacement, so that the interval holds the seed-to-seed noise as well as the
image-to-image one. A single run is a group of one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from segpipe.errors import SegpipeError
from segpipe.evaluation.intervals import SCORED, SEED, Interval, percentile_interval, resample_indices, resampled_scores
from segpipe.evaluation.metrics import scores
from segpipe.evaluation.per_image import PerImageResults

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
LABELS = {"miou": "mIoU", "f1": "F1 (Dice)", "pixel_accuracy": "pixel accuracy",
          "mean_class_accuracy": "mean class accuracy"}


@dataclass(frozen=True)
class ScoredRun:
    """What a run was scored on: the processed data's DVC hash (None when unknown) and its per-image results."""

    name: str
    processed_md5: str | None
    results: PerImageResults


def test_data_differences(a: ScoredRun, b: ScoredRun) -> list[str]:
    """What differs between the test data of two runs, in words (empty when they were scored on the same data)."""
    found = []
    if a.processed_md5 and b.processed_md5 and a.processed_md5 != b.processed_md5:
        found.append(f"the processed data (data_processed_dvc_md5 {a.processed_md5} in {a.name}, {b.processed_md5} "
                     f"in {b.name})")
    if a.results.classes != b.results.classes:
        found.append(f"the classes ({a.name}: {', '.join(a.results.classes)}; {b.name}: {', '.join(b.results.classes)})")
    if a.results.ids != b.results.ids:
        only_a = sorted(set(a.results.ids) - set(b.results.ids))
        only_b = sorted(set(b.results.ids) - set(a.results.ids))
        detail = (f"{len(only_a)} only in {a.name} (e.g. {', '.join(only_a[:3]) or '-'}), {len(only_b)} only in {b.name} "
                  f"(e.g. {', '.join(only_b[:3]) or '-'})" if only_a or only_b else "the same images in another order")
        found.append(f"the test images ({len(a.results.ids)} vs {len(b.results.ids)}: {detail})")
    return found


def check_same_test_data(runs: list[ScoredRun]) -> None:
    """Refuse, saying what differs, to compare runs scored on different test data."""
    for other in runs[1:]:
        differences = test_data_differences(runs[0], other)
        if differences:
            raise SegpipeError(f"{runs[0].name} and {other.name} were scored on different test data, so their scores "
                               f"cannot be paired: {'; '.join(differences)}. Compare runs evaluated on the same "
                               "processed data (the same data.* and preprocess.* params and dataset version)")


@dataclass(frozen=True)
class Difference:
    metric: str                 # a key of SCORED, or "iou/<class>"
    a: float | None             # the group's mean score (a single run's score)
    b: float | None
    a_std: float | None         # the standard deviation over the group's runs (None for a single run)
    b_std: float | None
    difference: float | None    # b - a
    interval: Interval | None   # of b - a

    @property
    def label(self) -> str:
        return f"IoU {self.metric.removeprefix('iou/')}" if self.metric.startswith("iou/") else LABELS[self.metric]

    @property
    def verdict(self) -> str:
        if self.interval is None:
            return NO_DIFFERENCE
        return BETTER if self.interval.low > 0 else WORSE if self.interval.high < 0 else NO_DIFFERENCE


@dataclass(frozen=True)
class PairedComparison:
    differences: list[Difference]   # the headline scores, then each class's IoU
    images: int
    runs_a: int
    runs_b: int
    samples: int
    confidence: float

    @property
    def headline(self) -> Difference:
        """mIoU's: what promotion and a one-word answer go by."""
        return self.differences[0]

    def by_metric(self) -> dict[str, Difference]:
        return {d.metric: d for d in self.differences}

    HEADER = ("metric", "A", "B", "B − A", "95% CI of B − A", "verdict")

    def rows(self) -> list[list[str]]:
        """One row per score, as `segpipe compare A B` prints it and the report shows it."""
        def value(mean, std):
            return "n/a" if mean is None else f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")

        return [[d.label, value(d.a, d.a_std), value(d.b, d.b_std),
                 "n/a" if d.difference is None else f"{d.difference:+.4f}",
                 "n/a" if d.interval is None else f"{d.interval.low:+.4f} … {d.interval.high:+.4f}", d.verdict]
                for d in self.differences]

    def note(self) -> str:
        seeds = (f"; A is the mean of {self.runs_a} runs and B of {self.runs_b} that differ only in train.seed "
                 "(± their standard deviation), and each resample also draws the seeds with replacement"
                 if self.runs_a > 1 or self.runs_b > 1 else "")
        return (f"Paired bootstrap over the {self.images} test images both were scored on: {self.samples} resamples, "
                f"each drawing the same images for A and B and scoring each from its summed confusion matrix{seeds}. "
                f"Better/worse: the {self.confidence:.0%} interval of B − A lies above/below 0.")


def _run_scores(results: PerImageResults) -> dict[str, float | None]:
    reduced = scores(results.matrices.sum(axis=0), results.classes)
    return {**{k: reduced[k] for k in SCORED}, **{f"iou/{c}": reduced["per_class"][c]["iou"] for c in results.classes}}


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None
    return float(np.mean(defined)), (float(np.std(defined, ddof=1)) if len(values) > 1 and len(defined) > 1 else None)


def _group_resamples(group: list[PerImageResults], indices: np.ndarray, seed_draws: np.ndarray) -> dict[str, np.ndarray]:
    """Each score of the group in every resample: its runs scored on the resampled images, averaged
    over the runs drawn for that resample (seed_draws: (samples, runs) indices into the group)."""
    per_run = [resampled_scores(results.matrices, indices, class_iou=True) for results in group]
    # resampled_scores names a class by its index.
    names = {**{name: name for name in SCORED}, **{f"iou/{i}": f"iou/{c}" for i, c in enumerate(group[0].classes)}}
    stacked = {name: np.stack([run[key] for run in per_run], axis=1) for key, name in names.items()}   # (samples, runs)
    rows = np.arange(len(indices))[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a resample whose drawn runs all lack a score: nan, said once
        return {name: np.nanmean(values[rows, seed_draws], axis=1) for name, values in stacked.items()}


def compare_groups(a: list[PerImageResults], b: list[PerImageResults], samples: int = 1000, confidence: float = 0.95,
                   seed: int = SEED) -> PairedComparison:
    """B - A for each headline score and each class's IoU, with its paired-bootstrap interval.
    Every run must have been scored on the same test images (check_same_test_data)."""
    if not a or not b:
        raise SegpipeError("a comparison needs at least one run on each side")
    if samples <= 0:
        raise SegpipeError(f"{samples} bootstrap samples: the paired comparison needs at least 1 (1000 is the default)")
    images = len(a[0].ids)
    if not images:
        raise SegpipeError("the runs were scored on no test images: there is nothing to compare")
    indices = resample_indices(images, samples, seed)
    # The seeds are drawn from a stream of their own, so that a single run's image draws match the report's.
    seeds = np.random.default_rng([seed, 1])
    draws_a, draws_b = seeds.integers(0, len(a), (samples, len(a))), seeds.integers(0, len(b), (samples, len(b)))
    resampled_a, resampled_b = _group_resamples(a, indices, draws_a), _group_resamples(b, indices, draws_b)
    full_a, full_b = [_run_scores(r) for r in a], [_run_scores(r) for r in b]
    differences = []
    for name in resampled_a:
        mean_a, std_a = _mean_std([run[name] for run in full_a])
        mean_b, std_b = _mean_std([run[name] for run in full_b])
        point = None if mean_a is None or mean_b is None else round(mean_b - mean_a, 6)
        interval = percentile_interval(resampled_b[name] - resampled_a[name], confidence, samples)
        differences.append(Difference(name, mean_a, mean_b, std_a, std_b, point, interval))
    return PairedComparison(differences, images, len(a), len(b), samples, confidence)


def compare_paired(a: PerImageResults, b: PerImageResults, samples: int = 1000, confidence: float = 0.95,
                   seed: int = SEED) -> PairedComparison:
    """Two runs: compare_groups with a group of one on each side."""
    return compare_groups([a], [b], samples, confidence, seed)
