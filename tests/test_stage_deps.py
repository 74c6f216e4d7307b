"""dvc.yaml's code deps are exactly the files each stage runs, so that editing any of
them re-runs the stage, and editing anything else does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT
from tests.import_graph import stage_files


def declared_code(stage: dict) -> set[Path]:
    """The .py files a stage's deps name (a folder dep stands for the modules in it)."""
    files: set[Path] = set()
    for dep in stage["deps"]:
        path = REPO_ROOT / dep
        if dep.startswith(("src/", "stages/")):
            files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return files


def test_every_stage_depends_on_exactly_the_code_it_imports():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, stage in stages.items():
        script = REPO_ROOT / stage["cmd"].split()[-1]
        imported = stage_files(script, REPO_ROOT / "src")
        declared = declared_code(stage)
        for path in sorted(imported - declared):
            problems.append(f"{name}: add `- {path.relative_to(REPO_ROOT)}` to its deps (the stage imports it)")
        for path in sorted(declared - imported):
            problems.append(f"{name}: remove `{path.relative_to(REPO_ROOT)}` from its deps (the stage never imports it)")
    assert not problems, "dvc.yaml disagrees with the code:\n" + "\n".join(problems)


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
                 "if getattr(m, '__file__', None) and m.__name__.split('.')[0] in ('segpipe', '_bootstrap')))")
        loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        at_import = {Path(line).resolve() for line in loaded.stdout.split()}
        walked = {p.resolve() for p in stage_files(script, REPO_ROOT / "src")}
        assert at_import <= walked, f"{name}: {sorted(map(str, at_import - walked))}"
