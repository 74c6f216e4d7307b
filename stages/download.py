"""download: import the dataset named by data.dataset into data/raw/ (images, masks, manifest)."""

from segpipe.atomic import atomic_dir
from segpipe.config import load_params
from segpipe.data.sources import import_dataset
from segpipe.stage import DOWNLOAD_CACHE, RAW_DIR, print_summary, run_stage


def main() -> None:
    params = load_params()
    with atomic_dir(RAW_DIR) as staging:
        dataset = import_dataset(params, staging, DOWNLOAD_CACHE)
    print_summary("download", dataset=dataset.dataset, pairs=len(dataset.pairs), classes=dataset.classes, out=str(RAW_DIR))


if __name__ == "__main__":
    run_stage(main)
