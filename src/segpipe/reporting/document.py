"""The report as a document: sections of text, tables and figures, rendered twice,
as reports/report.md (figures beside it) and as a self-contained
reports/report.html (figures embedded, no script, no link off the page), so
that it opens anywhere with no network.

The section builders take what the earlier stages wrote (metrics/, the
processed data's summary.json) and format it; they compute nothing that a
metrics file does not already hold, apart from the bootstrap intervals they
are given.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from segpipe.errors import shortlist
from segpipe.evaluation.intervals import Interval
from segpipe.reporting.figures import Figure
from segpipe.tracking.baseline import BaselineComparison
from segpipe.tracking.leaderboard import ComparedRun
from segpipe.tracking.params import ParamChange, Reference


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    strong_rows: frozenset[int] = frozenset()   # rows to stand out (the best run)


Block = Text | Table | Figure


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _interval(interval: Interval | None) -> str:
    return "n/a" if interval is None else f"{interval.low:.4f} – {interval.high:.4f}"


HEADLINE_NAMES = {"miou": "test mIoU", "f1": "test F1 (Dice)", "pixel_accuracy": "test pixel accuracy",
                  "mean_class_accuracy": "test mean class accuracy"}


def headline_section(evaluation: dict, training: dict, intervals: dict[str, Interval | None], samples: int) -> Section:
    with_ci = bool(intervals)
    rows = [[label, fmt(evaluation[key]), *([_interval(intervals.get(key))] if with_ci else [])]
            for key, label in HEADLINE_NAMES.items()]
    working = evaluation.get("working_resolution", {})
    blank = [""] if with_ci else []
    rows += [
        ["test mIoU at the working resolution", fmt(working.get("miou")), *blank],
        ["best validation mIoU", fmt(training["best_val_miou"]), *blank],
        ["epochs (best)", f"{training['epochs']} ({training['best_epoch']})", *blank],
        ["training time", f"{training['seconds']:.1f} s", *blank],
        ["training throughput", f"{training['train_images_per_second']:.1f} images/s on {training['device']}", *blank],
    ]
    images = evaluation["test_images"]
    note = (f"Scored on {images} test images, each against its mask at its original resolution. The 95% confidence "
            f"intervals come from {samples} bootstrap resamples of the test images (with replacement), each scored from "
            "its summed confusion matrix." if with_ci else
            f"Scored on {images} test images, each against its mask at its original resolution. No confidence intervals: "
            "report.bootstrap_samples is 0.")
    return Section("Headline", [Table(["metric", "value", *(["95% CI"] if with_ci else [])], rows), Text(note)])


def per_class_section(per_class: list[dict], summary: dict) -> Section:
    train_pixels = summary["class_pixels"].get("train", {})
    labelled = max(1, sum(train_pixels.values()))
    rows = [[r["class"], fmt(r["iou"]), fmt(r["f1"]), fmt(r["accuracy"]), f"{r['pixels']:,}",
             f"{train_pixels.get(r['class'], 0) / labelled:.1%}"] for r in per_class]
    return Section("Per class", [Table(["class", "IoU", "F1", "accuracy", "test pixels", "share of training pixels"], rows)])


def examples_section(best: Figure | None, worst: Figure | None) -> Section:
    blocks: list[Block] = [f for f in (best, worst) if f is not None]
    if not blocks:
        return Section("Test images", [Text("No examples: report.num_examples is 0.")])
    return Section("Best and worst test images by mIoU", [
        Text("Each image's own mIoU, over the classes present in its mask or its prediction; overlays at the working "
             "resolution."), *blocks])


def dataset_section(summary: dict) -> Section:
    classes, counts = summary["classes"], summary["counts"]
    splits = list(counts)
    balance = [[name, *(f"{summary['class_pixels'][s].get(name, 0):,}" for s in splits),
                f"{summary['class_frequency'].get(name, 0.0):.1%}"] for name in classes]  # of every split's pixels
    blocks: list[Block] = [
        Text(f"Dataset {summary['dataset']}: {sum(counts.values())} images, "
             + ", ".join(f"{counts[s]} {s}" for s in splits)
             + f"; resized by {summary['resize']['by']} to {summary['resize']['to']}."),
        Table(["class", *(f"{s} pixels" for s in splits), "share of all labelled pixels"], balance),
    ]
    rejected, leaks = summary.get("rejected", []), summary.get("leaks", [])
    shown_rejected = shortlist([f"{r['id']}: {r['reason']}" for r in rejected], 5, "; ")
    blocks.append(Text(f"Rejected files: {len(rejected)}" + (f" ({shown_rejected})." if rejected else ".")))
    shown_leaks = shortlist([" = ".join(f"{i} ({s})" for i, s in zip(leak["ids"], leak["splits"])) for leak in leaks], 5, "; ")
    blocks.append(Text(f"Images found in more than one split (leaks): {len(leaks)}"
                       + (f" ({shown_leaks}); test scores may be inflated." if leaks else ".")))
    return Section("Dataset", blocks)


def lineage_section(tags: dict[str, str], run_link: dict | None, results_run_id: str | None,
                    reference: Reference | None, changes: list[ParamChange]) -> Section:
    commit = tags.get("git_commit", "unknown")
    dirty = {"true": " (with uncommitted changes to code or params)", "false": ""}.get(tags.get("git_dirty", ""), "")
    rows = [["git commit", commit + dirty]]
    if tags.get("dvc_exp_name"):
        rows.append(["DVC experiment", f"{tags['dvc_exp_name']} (baseline {tags.get('dvc_exp_baseline_rev', '?')[:8]})"])
    trained_in = run_link.get("run_id") if run_link else None
    if trained_in:
        rows.append(["MLflow run (training)", f"{trained_in} ({run_link.get('run_name', '')})"])
    if results_run_id and results_run_id != trained_in:
        rows.append(["MLflow run (these results)", results_run_id])
    if not trained_in and not results_run_id:
        rows.append(["MLflow run", "none: tracking was off or unreachable (mlflow.required: false)"])
    blocks: list[Block] = [Table(["", ""], rows)]
    if reference is None:
        blocks.append(Text("No committed params.yaml to compare the params with (not a git repository, or nothing "
                           "committed yet)."))
    elif not changes:
        blocks.append(Text(f"Params: the same as {reference.what} (commit {reference.short})."))
    else:
        blocks.append(Text(f"Params that differ from {reference.what} (commit {reference.short}):"))
        blocks.append(Table(["param", f"at {reference.short}", "this run"],
                            [[c.key, str(c.before), str(c.after)] for c in changes]))
    return Section("This run", blocks)


def baseline_section(baseline: BaselineComparison, reference: Reference | None, changes: list[ParamChange]) -> Section:
    """This run against the model at its baseline commit: what changed, the paired differences and the verdict."""
    title = "Against the baseline"
    if baseline.comparison is None:
        return Section(title, [Text(f"No comparison with the baseline: {baseline.absent}.")])
    comparison, run = baseline.comparison, baseline.run
    changed = (", ".join(f"{c.key}: {c.before} → {c.after}" for c in changes) if changes else
               "no params (the code, the data or the environment changed)")
    headline = comparison.headline
    return Section(title, [
        Text(f"A is the model at {reference.what} (commit {reference.short}; MLflow run {run.name}, {run.run_id}); B is "
             f"this run. What changed: {changed}."),
        Table(list(comparison.HEADER), comparison.rows()),
        Text(f"In test mIoU this run is {headline.verdict} than the baseline at {comparison.confidence:.0%}"
             if headline.verdict != "no detectable difference" else
             f"In test mIoU there is no detectable difference from the baseline at {comparison.confidence:.0%}"),
        Text(comparison.note()),
    ])


def history_section(experiment: str, compared: list[ComparedRun] | None) -> Section:
    title = f"Runs of the MLflow experiment {experiment}"
    if compared is None:
        return Section(title, [Text("MLflow tracking was not active for this report (mlflow.required: false and the "
                                    "store unreachable), so earlier runs could not be read.")])
    if not compared:
        return Section(title, [Text("No run of this experiment has test scores yet.")])
    rows, strong = [], set()
    for k, c in enumerate(compared):
        marks = [m for m, on in (("best", c.is_best), ("this run", c.is_current)) if on]
        rows.append([("★ " if c.is_best else "") + c.run.name, c.run.started, c.run.git_commit[:8],
                     fmt(c.run.metrics.get("test_miou")), fmt(c.run.metrics.get("test_f1")),
                     ", ".join(marks), ", ".join(c.differences)])
        if c.is_best:
            strong.add(k)
    return Section(title, [
        Text("Newest first; ★ marks the best test mIoU. The last column lists the params in which a run differs from "
             "this one."),
        Table(["run", "started", "commit", "test mIoU", "test F1", "", "differs in"], rows, frozenset(strong))])


def figure_section(figure: Figure) -> Section:
    return Section(figure.title, [figure])


# --- rendering -------------------------------------------------------------------------


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: list[Section], figure_dir: str) -> str:
    lines = [f"# {title}"]
    for section in sections:
        lines += ["", f"## {section.title}"]
        for block in section.blocks:
            lines.append("")
            if isinstance(block, Text):
                lines.append(block.text)
            elif isinstance(block, Table):
                lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                for k, row in enumerate(block.rows):
                    cells = [_md_cell(c) for c in row]
                    if k in block.strong_rows:
                        cells = [f"**{c}**" if c else c for c in cells]
                    lines.append("| " + " | ".join(cells) + " |")
            else:
                lines.append(f"![{block.title}]({figure_dir}/{block.name}.png)")
    return "\n".join(lines) + "\n"


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header) if any(block.header) else ""
        strong = ' class="strong"'
        body = "".join(
            f"<tr{strong if k in block.strong_rows else ''}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for k, row in enumerate(block.rows))
        return f"<table>{f'<thead><tr>{head}</tr></thead>' if head else ''}<tbody>{body}</tbody></table>"
    data = base64.b64encode(block.png).decode("ascii")
    return f'<img alt="{html.escape(block.title)}" src="data:image/png;base64,{data}">'


STYLE = ("body{font-family:sans-serif;max-width:1040px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
         "tr.strong td{font-weight:bold;background:#fff6d5}img{max-width:100%;display:block;margin:1em 0}")


def render_html(title: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
