"""Imported first by every stage: run this checkout's own code.

DVC hashes ./src and ./stages, so that is the code that must run, also in the
temporary copies `dvc exp run --queue` works in, and whatever copy of segpipe
happens to be installed. And a `python` without the project's packages gets a
sentence, not an ImportError."""

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

_missing = [name for name in ("torch", "numpy", "yaml", "pydantic", "PIL") if importlib.util.find_spec(name) is None]
if _missing:
    sys.exit(f"error: {', '.join(_missing)} not installed for {sys.executable}: the `python` on PATH is not the "
             "project's environment. Activate it first (source .venv/bin/activate), or use `make run`.")
