"""preprocess: validate every pair, resize once, split, and store uint8 arrays in data/processed/."""

from segpipe.atomic import atomic_dir
from segpipe.config import load_params
from segpipe.data.preprocess import preprocess
from segpipe.data.raw import RawDataset
from segpipe.stage import PROCESSED_DIR, RAW_DIR, print_summary, run_stage


def main() -> None:
    params = load_params()
    raw = RawDataset.read(RAW_DIR)
    with atomic_dir(PROCESSED_DIR) as staging:
        summary = preprocess(raw, params.preprocess, staging)
    print_summary("preprocess", counts=summary["counts"], rejected=len(summary["rejected"]), out=str(PROCESSED_DIR))


if __name__ == "__main__":
    run_stage(main)
