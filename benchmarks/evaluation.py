"""Comparison 4: what the metrics cost next to inference.

Four passes over the same test split, interleaved:

- inference: data.batches.Batches and models.forward.predict_logits alone (batches normalised
  on the device, through the model): what evaluation cannot do without;
- evaluate: evaluation.scoring.evaluate plus evaluation.metrics.scores (validation every epoch: one
  confusion matrix at the working resolution);
- native_prediction: inference plus what score_test does to predict at each
  image's native size (bilinear upsampling of the logits, argmax), without scoring;
- score_test: evaluation.scoring.score_test plus evaluation.metrics.scores for both of its matrices (the
  evaluate stage: predictions at native size scored against the original masks,
  one matrix per image and one at the working resolution).

The metric share is the extra time of a scoring pass over the prediction it
scores: evaluate over inference, score_test over native_prediction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from benchmarks.timing import Timings, interleaved
from segpipe.config import Params
from segpipe.data.batches import Batches
from segpipe.data.processed import ProcessedSplit, read_summary
from segpipe.device import Runtime
from segpipe.evaluation.metrics import scores
from segpipe.evaluation.scoring import evaluate, score_test
from segpipe.models import create_model, spec_for
from segpipe.models.forward import predict_logits

# The metric share is a difference of two similar durations, against a 5% target: resolve 2%.
AGREEMENT = 0.02


def _timed(work: Callable[[], object], runtime: Runtime) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        work()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


@dataclass
class EvaluationResult:
    device: str
    images: int
    timings: dict[str, Timings]

    def extra_share(self, variant: str, over: str) -> float:
        """(variant - over) / over, from the best repeat of each."""
        base = self.timings[over].best
        return (self.timings[variant].best - base) / base


def measure_evaluation(processed: Path, params: Params, runtime: Runtime, rounds: int,
                       max_rounds: int | None = None) -> EvaluationResult:
    summary = read_summary(processed)
    classes, ignore_index = summary["classes"], summary["ignore_index"]
    torch.manual_seed(params.train.seed)
    model = create_model(spec_for(params.model, len(classes))).to(runtime.device).eval()
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    test = Batches(ProcessedSplit.load(processed, "test"), params.evaluate.batch_size, runtime, summary["mean"],
                   summary["std"])

    def inference() -> None:
        for images, _, _ in test.iterate():
            predict_logits(model, images, runtime)

    def native_prediction() -> None:
        # score_test's prediction at each image's original size (its upsampling and argmax), left unscored.
        for images, _, index in test.iterate():
            logits = predict_logits(model, images, runtime)
            for k, row in enumerate(index):
                size = tuple(int(n) for n in test.split.native_shapes[row])
                upsampled = logits[k : k + 1]
                if size != tuple(upsampled.shape[-2:]):
                    upsampled = F.interpolate(upsampled, size=size, mode="bilinear", align_corners=False)
                upsampled.argmax(dim=1)

    def validation() -> None:
        matrix, _ = evaluate(model, test, len(classes), ignore_index, runtime)
        scores(matrix.numpy(), classes)

    def test_scoring() -> None:
        scored = score_test(model, test, len(classes), ignore_index, runtime)
        scores(scored.native.numpy(), classes)
        scores(scored.working.numpy(), classes)

    variants = {"inference": _timed(inference, runtime), "evaluate": _timed(validation, runtime),
                "native_prediction": _timed(native_prediction, runtime), "score_test": _timed(test_scoring, runtime)}
    timings = interleaved(variants, rounds, max_rounds=max_rounds, agreement=AGREEMENT)
    return EvaluationResult(str(runtime.device), len(test.split), timings)
