"""download: import the dataset named by data.dataset into data/raw/ (images, masks, manifest)."""

import _syspath  # noqa: F401  (this checkout's src/ first on sys.path)

from segpipe.atomic import atomic_dir
from segpipe.data.sources import SOURCES, import_dataset
from segpipe.errors import warn
from segpipe.paths import DOWNLOAD_CACHE, RAW_DIR
from segpipe.runner import print_summary, run_stage, stage_params


def main() -> None:
    params = stage_params()
    SOURCES.check(params.data.dataset)
    with atomic_dir(RAW_DIR) as staging:
        dataset = import_dataset(params, staging, DOWNLOAD_CACHE)
    if dataset.problems:
        warn(f"{len(dataset.problems)} files could not be used (listed in {RAW_DIR}/manifest.json; preprocess reports them)")
    print_summary("download", dataset=dataset.dataset, pairs=len(dataset.pairs), problems=len(dataset.problems),
                  classes=dataset.classes, out=str(RAW_DIR))


if __name__ == "__main__":
    run_stage(main)
