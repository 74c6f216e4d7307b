"""The README stays true: every `dvc exp run -S` command it shows (in its code blocks,
and inline in its prose and tables) makes params that segpipe accepts, as DVC itself
would apply them, and every knob in params.yaml is in its table of knobs."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides, get_hydra_sweeps

from segpipe.config import flatten, load_params

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shown_commands(text: str) -> list[str]:
    """Shell lines inside the README's code blocks, with `\\` continuations joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines.extend(block.replace("\\\n", " ").splitlines())
    return [line.split(" #")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def inline_settings(text: str) -> list[str]:
    """`dvc exp run -S ...` and `-S ...` written inline in the prose and tables, as commands."""
    spans = re.findall(r"`((?:dvc exp run )?-S [^`]+)`", text)
    return [span if span.startswith("dvc exp run") else f"dvc exp run {span}" for span in spans
            if "section.key" not in span]  # the README's explanation of the syntax, not a setting


def overrides_of(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[i + 1] for i, word in enumerate(words) if word in ("-S", "--set-param")]


EXPERIMENTS = [c for c in shown_commands(README) + inline_settings(README)
               if c.startswith("dvc exp run") and overrides_of(c)]


def test_the_readme_shows_experiments_and_recipes():
    assert len(EXPERIMENTS) >= 12
    assert any("weizmann_horse" in c for c in EXPERIMENTS)


@pytest.mark.parametrize("command", EXPERIMENTS)
def test_each_experiment_in_the_readme_makes_params_segpipe_accepts(command, tmp_path):
    # One set of params per swept value (`-S train.lr=0.001,0.003`), as `dvc exp run --queue` makes them.
    for sweep in get_hydra_sweeps({"params.yaml": overrides_of(command)}):
        params = tmp_path / "params.yaml"
        shutil.copy(ROOT / "params.yaml", params)
        apply_overrides(params, sweep["params.yaml"])
        load_params(params)  # raises, naming the key, on a recipe that no longer fits the params


def knobs_in_table(text: str) -> set[str]:
    """The keys named in the first column of the README's knob table: `a.b.c`, `.d` (a sibling), `a.*`."""
    table = text.split("## The knobs")[1].split("\n## ")[0]
    keys = set()
    for row in re.findall(r"^\| (`[^|]*`) \|", table, flags=re.M):
        parent = ""
        for key in re.findall(r"`([^`]+)`", row):
            if key.startswith("."):
                key = parent + key
            parent = key.rsplit(".", 1)[0]
            keys.add(key)
    return keys


def test_every_knob_in_params_yaml_is_in_the_readme_table():
    documented = knobs_in_table(README)
    leaves = flatten(yaml.safe_load((ROOT / "params.yaml").read_text()))
    missing = [key for key in leaves
               if key not in documented and not any(key.startswith(d[:-1]) for d in documented if d.endswith(".*"))]
    assert missing == []
    assert {key for key in documented if not key.endswith(".*")} <= set(leaves)  # no knob that is gone
