"""dvc.yaml's code deps are exactly the files each stage runs, so that editing any of
them re-runs the stage, and editing anything else does not."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

from tests.conftest import REPO_ROOT
from tools.stage_deps import declared_code, rewrite, stage_files, wanted_deps

FIX = "run `python -m tools.stage_deps`, which rewrites dvc.yaml's code deps from the imports"


def test_every_stage_depends_on_exactly_the_code_it_imports():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, stage in stages.items():
        script = REPO_ROOT / stage["cmd"].split()[-1]
        imported = stage_files(script, REPO_ROOT / "src")
        declared = declared_code(stage, REPO_ROOT)
        for path in sorted(imported - declared):
            problems.append(f"{name}: add `- {path.relative_to(REPO_ROOT)}` to its deps (the stage imports it)")
        for path in sorted(declared - imported):
            problems.append(f"{name}: remove `{path.relative_to(REPO_ROOT)}` from its deps (the stage never imports it)")
    assert not problems, f"dvc.yaml disagrees with the code ({FIX}):\n" + "\n".join(problems)


def test_the_deps_tool_writes_what_the_check_expects_and_keeps_everything_else():
    text = (REPO_ROOT / "dvc.yaml").read_text()
    assert rewrite(text, wanted_deps(REPO_ROOT)) == text, FIX
    # A stage that lost a module and gained a stale one gets exactly its imports back; its other
    # deps (data, the model) and comments stay where they were.
    broken = text.replace("      - src/segpipe/evaluation/scoring.py\n", "", 1).replace(
        "      - src/segpipe/runner.py\n", "      - src/segpipe/runner.py\n      - src/segpipe/serving/export.py\n", 1)
    assert broken != text
    assert rewrite(broken, wanted_deps(REPO_ROOT)) == text


def test_a_package_the_stage_runs_whole_is_one_folder_dep_and_the_cache_boundaries_hold():
    deps = {name: stage["deps"] for name, stage in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"].items()}
    assert "src/segpipe/models" in deps["train"] and "src/segpipe/training" in deps["train"]
    # Serving code (predict, export) re-runs no stage; augmentation re-runs train, not evaluate or report.
    for name, listed in deps.items():
        assert not [d for d in listed if d.startswith("src/segpipe/serving")], name
    for name in ("evaluate", "report"):
        assert not [d for d in deps[name] if d.startswith("src/segpipe/training")], name
    # The maintainer tools and their dependencies are no part of any stage.
    assert not [d for listed in deps.values() for d in listed if d.startswith("tools/")]


def test_the_walk_follows_in_function_imports_and_package_inits(tmp_path):
    (tmp_path / "src/pkg/sub").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    for name in ("src/pkg/__init__.py", "src/pkg/sub/__init__.py", "src/pkg/lazy.py", "src/pkg/unused.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "src/pkg/sub/leaf.py").write_text("def f():\n    from pkg import lazy\n")
    (tmp_path / "stages/helper.py").write_text("")
    (tmp_path / "stages/run.py").write_text("import helper\nfrom pkg.sub.leaf import f\n")
    found = {p.relative_to(tmp_path).as_posix() for p in stage_files(tmp_path / "stages/run.py", tmp_path / "src", "pkg")}
    assert found == {"stages/run.py", "stages/helper.py", "src/pkg/__init__.py", "src/pkg/sub/__init__.py",
                     "src/pkg/sub/leaf.py", "src/pkg/lazy.py"}


def test_each_stage_really_imports_no_more_than_the_walk_found():
    # The static walk against Python's own record of what a stage's imports load.
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = REPO_ROOT / stage["cmd"].split()[-1]
        probe = (f"import sys, runpy; sys.argv = ['{script}']; sys.path.insert(0, '{script.parent}'); "
                 f"import importlib; spec = importlib.util.spec_from_file_location('stage', '{script}'); "
                 "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
                 "print('\\n'.join(m.__file__ for m in list(sys.modules.values()) "
                 "if getattr(m, '__file__', None) and m.__name__.split('.')[0] in ('segpipe', '_syspath')))")
        loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        at_import = {Path(line).resolve() for line in loaded.stdout.split()}
        walked = {p.resolve() for p in stage_files(script, REPO_ROOT / "src")}
        assert at_import <= walked, f"{name}: {sorted(map(str, at_import - walked))}"


def test_the_product_imports_none_of_the_scaffoldings_dependencies():
    # psycopg, boto3 and moto serve the team stack, vl-convert the plots page: tools/ alone, and extras.
    heavy = ("psycopg", "boto3", "moto", "vl_convert")
    found = []
    for path in sorted((REPO_ROOT / "src").rglob("*.py")) + sorted((REPO_ROOT / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.split(".")[0] in heavy]
    assert found == []
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.split("[")[0].split(">")[0] in ("psycopg", "boto3", "moto")]
