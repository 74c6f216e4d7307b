"""Which of the project's files a stage really runs: its script, and every segpipe
module it imports, at the top of a file or inside a function, followed through
the modules they import in turn (package __init__ files included, since Python
runs them on the way)."""

from __future__ import annotations

import ast
from pathlib import Path


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
