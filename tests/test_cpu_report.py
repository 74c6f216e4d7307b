"""--cpu-report counts a test's own processor time and that of the processes it waits for, under
xdist's workers as in one process, and says what the total means on this machine's cores."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT
from tests.cpu_report import by_module

# Two tests that compute a known processor time: 0.6 s in the test's own process, 0.8 s in a child.
BUSY_TESTS = textwrap.dedent('''
    import subprocess, sys, time

    BUSY = "import time\\nwhile time.process_time() < 0.8: pass"

    def test_computes_in_its_own_process():
        start = time.process_time()
        while time.process_time() < start + 0.6:
            pass

    def test_computes_in_a_child():
        subprocess.run([sys.executable, "-c", BUSY], check=True)
''')


def test_rows_add_up_per_module_costliest_first():
    rows = [("tests/a.py::x", 1.0, 0.5, 2.0), ("tests/b.py::y", 9.0, 0.1, 0.0), ("tests/a.py::z", 2.0, 0.25, 0.0)]
    assert by_module(rows) == [("tests/a.py", 2, 3.0, 0.75, 2.0), ("tests/b.py", 1, 9.0, 0.1, 0.0)]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "two xdist workers"])
def test_the_report_counts_own_and_child_processor_time(tmp_path, workers):
    (tmp_path / "test_busy.py").write_text(BUSY_TESTS)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.cpu_report",
                             "--cpu-report", *workers, "test_busy.py"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = result.stdout.split("processor time per test module (--cpu-report)", 1)[1]
    (row,) = [line.split() for line in report.splitlines() if line.startswith("test_busy.py ")]
    tests, (wall, own, children, cpu) = int(row[1]), map(float, row[2:])
    assert tests == 2 and wall >= 0.6 + 0.8  # each busy loop is one thread: its wall time is at least its CPU time
    assert 0.6 <= own < 3 and 0.8 <= children < 3 and cpu == pytest.approx(own + children, abs=0.11)
    total = re.search(r"^2 tests computed (\d+) CPU s in \d+ s: on (\d+) cores, no hand-out of these tests finishes "
                      r"in under (\d+) s$", report, re.MULTILINE)
    assert total, report
    computed, cores, floor = map(int, total.groups())
    assert computed >= 1 and abs(floor * cores - computed) <= cores  # the total over the cores, both rounded
