"""dvc.yaml's code deps, written from the stages' imports.

    python -m tools.stage_deps            # rewrite each stage's src/ and stages/ deps in dvc.yaml
    python -m tools.stage_deps --check    # exit 1, naming the differences, when dvc.yaml is out of date

A stage's code deps are exactly the files it runs: its script, the files beside it
that it imports, and every segpipe module it imports, at the top of a file or
inside a function, followed through the modules those import (package __init__
files included, since Python runs them on the way). A package folder the stage
runs every module of is written as the folder. Other deps (data, models, metrics)
and comments are kept where they are. tests/test_stage_deps.py runs the check.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CODE_PREFIXES = ("src/", "stages/")


def _module_file(src: Path, dotted: str) -> Path | None:
    base = src.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, package: str) -> set[str]:
    """Dotted names of the modules a file imports (absolute and relative)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def stage_files(script: Path, src: Path, top_package: str = "segpipe") -> set[Path]:
    """The script, the files beside it that it imports, and the package files it reaches."""
    result: set[Path] = set()
    todo: list[tuple[Path, str]] = [(script, "")]
    while todo:
        path, package = todo.pop()
        if path in result:
            continue
        result.add(path)
        for name in _imported_modules(path, package):
            if name.split(".")[0] == top_package:
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):  # every package on the way runs its __init__
                    found = _module_file(src, ".".join(parts[:depth]))
                    if found is not None:
                        pkg = ".".join(parts[:depth]) if found.name == "__init__.py" else ".".join(parts[: depth - 1])
                        todo.append((found, pkg))
            elif "." not in name and (script.parent / f"{name}.py").is_file():  # a helper beside the script
                todo.append((script.parent / f"{name}.py", ""))
    return result


def as_deps(files: set[Path], root: Path) -> list[str]:
    """Relative paths, a package folder in place of its files when the stage runs all of them
    (the script's own folder is never collapsed: stages/ holds the other stages too)."""
    chosen = set(files)
    packages = sorted({p.parent for p in files if p.name == "__init__.py"}, key=lambda p: len(p.parts))
    for folder in packages:
        inside = set(folder.rglob("*.py"))
        if inside <= chosen:
            chosen = (chosen - inside) | {folder}
    # The stage's own folder first (the script, then its helpers), then the package, alphabetically.
    return sorted((p.relative_to(root).as_posix() for p in chosen),
                  key=lambda dep: (not dep.startswith("stages/"), dep.startswith("stages/_"), dep))


def declared_code(stage: dict, root: Path) -> set[Path]:
    """The .py files a stage's deps name (a folder dep stands for the modules in it)."""
    files: set[Path] = set()
    for dep in stage.get("deps", []):
        path = root / dep
        if dep.startswith(CODE_PREFIXES):
            files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return files


def stage_script(stage: dict, root: Path) -> Path:
    return root / stage["cmd"].split()[-1]


def wanted_deps(root: Path = ROOT) -> dict[str, list[str]]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: as_deps(stage_files(stage_script(stage, root), root / "src"), root) for name, stage in stages.items()}


def rewrite(text: str, wanted: dict[str, list[str]]) -> str:
    """dvc.yaml with each stage's code deps replaced, everything else as it was."""
    lines, out, stage, in_deps, written = text.splitlines(keepends=True), [], None, False, set()
    for line in lines:
        stage_match = re.match(r"^  (\w[\w-]*):\s*$", line)
        if stage_match:
            stage, in_deps = stage_match.group(1), False
        elif re.match(r"^    deps:\s*$", line):
            in_deps = True
        elif re.match(r"^    \S", line):
            in_deps = False
        dep = re.match(r"^(\s+)- (\S+)\s*$", line) if in_deps else None
        if dep and dep.group(2).startswith(CODE_PREFIXES) and stage in wanted:
            if stage not in written:
                out.extend(f"{dep.group(1)}- {path}\n" for path in wanted[stage])
                written.add(stage)
            continue
        out.append(line)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stage_deps", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when dvc.yaml is out of date")
    args = parser.parse_args(argv)
    path = ROOT / "dvc.yaml"
    before = path.read_text()
    after = rewrite(before, wanted_deps(ROOT))
    if after == before:
        print("dvc.yaml: every stage's code deps match its imports")
        return 0
    if args.check:
        print("dvc.yaml's code deps differ from the stages' imports: run python -m tools.stage_deps", file=sys.stderr)
        return 1
    path.write_text(after)
    print("dvc.yaml: code deps rewritten from the stages' imports (then `dvc repro` records them in dvc.lock)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
