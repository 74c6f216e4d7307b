"""preprocess: validate every pair, bring it to the working resolution once, split, and
store uint8 arrays in data/processed/."""

import _syspath  # noqa: F401  (this checkout's src/ first on sys.path)

from segpipe.atomic import atomic_dir
from segpipe.data.preprocess import preprocess
from segpipe.data.raw import RawDataset
from segpipe.errors import warn
from segpipe.paths import PROCESSED_DIR, RAW_DIR
from segpipe.runner import print_summary, run_stage, stage_params


def main() -> None:
    params = stage_params()
    raw = RawDataset.read(RAW_DIR)
    with atomic_dir(PROCESSED_DIR) as staging:
        summary = preprocess(raw, params.preprocess, staging)
    if summary["rejected"]:
        warn(f"{len(summary['rejected'])} samples skipped (preprocess.on_bad_sample: skip); listed in "
             f"{PROCESSED_DIR}/summary.json under rejected")
    if summary["leaks"]:
        warn(f"{len(summary['leaks'])} images appear in more than one split (same pixels): test scores may be inflated; "
             f"listed in {PROCESSED_DIR}/summary.json under leaks (preprocess.on_leak: error stops instead)")
    print_summary("preprocess", counts=summary["counts"], rejected=len(summary["rejected"]), leaks=len(summary["leaks"]),
                  out=str(PROCESSED_DIR))


if __name__ == "__main__":
    run_stage(main)
