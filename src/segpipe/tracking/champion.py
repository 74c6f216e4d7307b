"""The champion: the model version the MLflow registry's `champion` alias points at
(models:/<name>@champion), moved only to a version that the paired comparison with
the current champion, on the same test data, finds better in test mIoU.

Aliases, not the deprecated stages. The version that becomes champion carries the
comparison as tags (segpipe.champion.*): the version it replaced, the mIoU difference
and its 95% interval, and the test data both were scored on.
"""

from __future__ import annotations

from dataclasses import dataclass

from segpipe.errors import SegpipeError
from segpipe.evaluation.paired import BETTER, PairedComparison, check_same_test_data, compare_paired
from segpipe.tracking.leaderboard import RunSummary
from segpipe.tracking.paired_runs import ComparedRun, run_test_data

ALIAS = "champion"
TAG = "segpipe.champion"


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    version: str
    previous: str | None                    # the champion's version before (None: there was none)
    comparison: PairedComparison | None     # None when there was no champion, or it is the same run
    message: str


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def run_version(client, name: str, run: RunSummary):
    """The newest version of registered model `name` that the run logged."""
    try:
        versions = client.search_model_versions(f"name = '{_quote(name)}' and run_id = '{run.run_id}'")
    except Exception as exc:
        raise SegpipeError(f"cannot read registered model {name!r}: {exc}") from None
    if not versions:
        raise SegpipeError(f"run {run.name} ({run.run_id}) has no version of registered model {name!r}: train with "
                           f"mlflow.log_model: true and mlflow.register_model: {name} (or register its model in the "
                           "MLflow UI), then promote it")
    return max(versions, key=lambda v: int(v.version))


def current_champion(client, name: str):
    """The version the alias points at; None only when there is no such alias (or model) yet. Any other failure
    (the server down, a login refused) is an error: taking it for "no champion" would promote without comparing."""
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except Exception as exc:
        if getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise SegpipeError(f"cannot read the {ALIAS!r} alias of registered model {name!r}: {exc}; nothing was "
                           "promoted") from None


def comparison_tags(comparison: PairedComparison, champion: ComparedRun, previous_version: str) -> dict[str, str]:
    headline, data = comparison.headline, champion.test_data
    tags = {"previous_version": previous_version, "compared_with_run": champion.run.run_id if champion.run else "",
            "verdict": headline.verdict,
            "miou_difference": "n/a" if headline.difference is None else f"{headline.difference:.6f}",
            "test_images": str(comparison.images), "test_data_md5": data.processed_md5 or "unknown",
            "bootstrap_samples": str(comparison.samples)}
    if headline.interval is not None:
        tags |= {"miou_ci95_low": f"{headline.interval.low:.6f}", "miou_ci95_high": f"{headline.interval.high:.6f}"}
    for difference in comparison.differences[1:4]:
        tags[f"{difference.metric}_difference"] = "n/a" if difference.difference is None else f"{difference.difference:.6f}"
    return {f"{TAG}.{key}": value for key, value in tags.items()}


def promote(client, name: str, run: RunSummary, samples: int = 1000) -> Promotion:
    """Point `champion` at the run's version when it beats the current champion (or there is none)."""
    version = str(run_version(client, name, run).version)   # a string over REST, an int from a SQLite store
    champion = current_champion(client, name)
    holder_version = None if champion is None else str(champion.version)
    if champion is None:
        client.set_registered_model_alias(name, ALIAS, version)
        client.set_model_version_tag(name, version, f"{TAG}.previous_version", "none")
        return Promotion(True, version, None, None, f"{name} version {version} ({run.name}) is the first "
                         f"champion: models:/{name}@{ALIAS}")
    if champion.run_id == run.run_id:
        return Promotion(True, version, holder_version, None,
                         f"{run.name} is already the champion ({name} version {holder_version})")
    challenger = run_test_data(client, run)
    holder = run_test_data(client, RunSummary.from_mlflow(client.get_run(champion.run_id)))
    check_same_test_data([holder.test_data, challenger.test_data])
    comparison = compare_paired(holder.test_data.results, challenger.test_data.results, samples)
    headline = comparison.headline
    if headline.verdict != BETTER:
        return Promotion(False, version, holder_version, comparison,
                         f"not promoted: {run.name} ({name} version {version}) is not better than the champion "
                         f"(version {holder_version}, {holder.test_data.name}) in test mIoU: {headline.verdict}, "
                         f"B − A {_signed(headline.difference)}, 95% CI {_interval(headline)}; the alias stays on version "
                         f"{holder_version}")
    for key, value in comparison_tags(comparison, holder, holder_version).items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, ALIAS, version)
    return Promotion(True, version, holder_version, comparison,
                     f"promoted: models:/{name}@{ALIAS} is now version {version} ({run.name}), better than version "
                     f"{holder_version} in test mIoU by {_signed(headline.difference)} (95% CI {_interval(headline)})")


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _interval(difference) -> str:
    return "n/a" if difference.interval is None else f"{difference.interval.low:+.4f} … {difference.interval.high:+.4f}"
