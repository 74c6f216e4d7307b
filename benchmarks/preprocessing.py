"""Comparison 3: preprocess throughput, one process against every core (preprocess.workers
1 and 0), and its peak memory at two dataset sizes ten times apart (flat, since
preprocess streams samples to disk).

The memory figures are the stage's own process, which plans where every sample goes and
adds up the small figures the workers send back (no pixels pass through it); each worker
of the pool decodes one sample at a time and writes it into its place in the files, so
its peak, reported beside, does not grow with the dataset either.

Each size runs the project's preprocess in a fresh Python process, as the DVC
stage does, and the peaks come from the child's own /proc/self/status:

- its peak resident set size since it started (VmHWM, imports included);
- the peak while preprocess() ran, over what the child held just before: Linux
  resets the high-water mark on writing 5 to /proc/self/clear_refs, so an
  import-time peak cannot hide preprocess's own.

Not getrusage(RUSAGE_CHILDREN) or os.wait4: a child's ru_maxrss counts the
memory of the parent it was forked from (the mark carries across exec), so a
parent holding torch would report hundreds of MB the child never used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from benchmarks.photos import write_photos
from benchmarks.project import REPO_ROOT
from segpipe.data.preprocess import worker_count


@dataclass
class PreprocessRun:
    images: int
    seconds: float                # inside the child, preprocess() alone
    process_peak_mb: float        # the whole child process since it started, imports included
    before_mb: float              # resident just before preprocess() started
    peak_during_mb: float | None  # high-water mark while preprocess() ran (None where the reset is unavailable)
    worker_peak_mb: float | None = None  # the largest peak of a pool's worker (None: one process, no pool)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def growth_mb(self) -> float | None:
        """What preprocess itself added at its peak."""
        return None if self.peak_during_mb is None else self.peak_during_mb - self.before_mb


def run_preprocess_child(raw_root: Path, out: Path, side: int, workers: int = 0) -> PreprocessRun:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src")])}
    command = [sys.executable, "-m", "benchmarks.preprocessing", str(raw_root), str(out), str(side), str(workers)]
    child = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"preprocess benchmark child failed ({child.returncode}):\n{child.stdout}\n{child.stderr}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    return PreprocessRun(**report)


@dataclass
class PreprocessResult:
    small: PreprocessRun         # every core (preprocess.workers: 0)
    large: PreprocessRun         # every core, ten times the images (the fastest of `rounds`)
    one_process: PreprocessRun   # the large dataset again, preprocess.workers: 1 (the fastest of `rounds`)
    cores: int
    rounds: int = 1              # interleaved runs of every core and of one process on the large dataset

    @property
    def speedup(self) -> float:
        """Every core over one process, on the larger dataset."""
        return self.large.images_per_second / self.one_process.images_per_second

    @property
    def memory_ratio(self) -> float:
        """Peak memory at ten times the images over the peak at one time (whole process)."""
        return self.large.process_peak_mb / self.small.process_peak_mb


def measure_preprocess(images: int, side: int, scale: int = 10, workdir: Path | None = None,
                       rounds: int = 1) -> PreprocessResult:
    """Preprocess `images` and `scale` times as many 480x360 photos (split by seed, as by default). On the larger
    set, every core and one process run `rounds` times each, interleaved, and the fastest of each is quoted (as in
    the other comparisons): on a shared machine, the rounds that met the fewest other jobs."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        raw = write_photos(Path(tmp) / f"raw_{images}", {None: images})
        small = run_preprocess_child(raw.root, Path(tmp) / f"processed_{images}", side)
        raw = write_photos(Path(tmp) / f"raw_{images * scale}", {None: images * scale})
        every_core, one = [], []
        for index in range(rounds):
            every_core.append(run_preprocess_child(raw.root, Path(tmp) / f"processed_every_core_{index}", side))
            one.append(run_preprocess_child(raw.root, Path(tmp) / f"processed_one_process_{index}", side, workers=1))
        fastest = lambda runs: min(runs, key=lambda run: run.seconds)  # noqa: E731
        return PreprocessResult(small, fastest(every_core), fastest(one), worker_count(0), rounds)


def _memory_mb(field: str, process: str = "self") -> float:
    for line in Path(f"/proc/{process}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class _WorkerPeaks(threading.Thread):
    """The peaks (VmHWM) of this process's children, and whether any imported torch (its libraries in its memory
    map), read every 50 ms while they live."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks: dict[str, float] = {}
        self.with_torch: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.done.wait(0.05):
            for entry in Path("/proc").iterdir():  # children come after this process: only later process ids
                if entry.name.isdigit() and int(entry.name) > me:
                    try:
                        if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] != str(me):  # its parent
                            continue
                        self.peaks[entry.name] = _memory_mb("VmHWM", entry.name)
                        if entry.name not in self.with_torch and "libtorch" in (entry / "maps").read_text():
                            self.with_torch.add(entry.name)
                    except (OSError, KeyError, IndexError):  # it ended meanwhile
                        continue

    def stop(self) -> None:
        self.done.set()
        self.join()


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child_main(raw_root: str, out: str, side: str, workers: str) -> None:
    import time

    from benchmarks.photos import preprocess_photos
    from benchmarks.project import project_params
    from segpipe.data.raw import RawDataset

    params = project_params().preprocess.model_copy(update={"workers": int(workers)})
    raw = RawDataset.read(raw_root)
    import_peak = _memory_mb("VmHWM")
    resettable = _reset_peak()
    before = _memory_mb("VmRSS")
    workers = _WorkerPeaks()
    workers.start()
    start = time.perf_counter()
    preprocess_photos(raw, Path(out), int(side), params)
    seconds = time.perf_counter() - start
    peak = _memory_mb("VmHWM")
    workers.stop()
    if workers.with_torch:  # spawned workers run the parent's main again unless preprocess prevents it
        raise RuntimeError(f"preprocess workers {sorted(workers.with_torch)} imported torch")
    print(json.dumps({"images": len(raw.pairs), "seconds": seconds, "process_peak_mb": max(import_peak, peak),
                      "before_mb": before, "peak_during_mb": peak if resettable else None,
                      "worker_peak_mb": max(workers.peaks.values(), default=None)}))

if __name__ == "__main__":
    _child_main(*sys.argv[1:])
