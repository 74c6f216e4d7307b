#!/usr/bin/env bash
# The whole product on a CUDA machine with no network, in about 8 minutes (benchmarks/README.md):
#
#   1. install what the machine lacks, from the wheels it is given (pip --no-index --find-links);
#   2. the real `dvc repro` of the default pipeline, train.device cuda, in a temporary copy of the project
#      (all five stages, MLflow into the copy's own SQLite store, model logging on);
#   3. one `dvc exp run` of a torchvision DeepLabV3 at 512x512, batch 16;
#   4. `segpipe predict` on a few photos and `segpipe export` (which checks ONNX Runtime against PyTorch);
#   5. `make bench` restricted to its CUDA rows (train loop, evaluation, the realistic workload);
#   6. one JSON summary: every step's exit status and seconds, the stages' metrics, the run's system metrics.
#
#   benchmarks/gpu_check.sh [--wheels DIR] [--out FILE] [--device cuda|cpu] [--quick] [--keep]
#
# --device cpu --quick runs every step on the CPU at toy sizes (tests/test_gpu_check.py does, so the
# script cannot rot on machines without a GPU). Exit status: 0 when every step passed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=cuda QUICK=0 KEEP=0 WHEELS="" OUT="$PWD/gpu_check.json" PYTHON=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$(cd "$2" && pwd) || { echo "gpu_check: --wheels $2 is not a folder" >&2; exit 2; }; shift 2 ;;
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device is cuda or cpu, not $DEVICE" >&2; exit 2 ;; esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/segpipe-gpu-check.XXXXXX")
[ "$KEEP" = 1 ] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/logs"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
FAILED=0

# step NAME COMMAND...: runs it with its output in logs/NAME.log, records exit status and seconds.
step() {
  local name=$1; shift
  local start end rc
  echo "gpu_check: $name ..." >&2
  start=$(date +%s.%N)
  "$@" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN { print $end - $start }")" >> "$STEPS"
  if [ "$rc" != 0 ]; then
    FAILED=1
    echo "gpu_check: $name failed ($rc); the end of its output:" >&2
    tail -n 30 "$WORK/logs/$name.log" >&2
  fi
  return "$rc"
}

# 1. What the machine lacks, from the wheels (prepared on a machine with network: benchmarks/README.md).
install() {
  "$PYTHON" -m venv --system-site-packages "$WORK/venv" &&
    "$WORK/venv/bin/python" -m pip install --no-index --find-links "$WHEELS" --no-build-isolation -e "$REPO[gpu]"
}
if [ -n "$WHEELS" ]; then
  step install install && PYTHON="$WORK/venv/bin/python"
fi
BIN=$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")
export PATH="$BIN:$PATH"
# Nothing of the caller's tracking or DVC settings leaks in: the copy records into its own SQLite store.
for name in $(env | grep -oE '^(MLFLOW_|DVC_)[A-Z_]*'); do unset "$name"; done
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true
step environment "$PYTHON" - "$DEVICE" <<'EOF'
import sys
import dvc, mlflow, segpipe, torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "mlflow", mlflow.__version__)
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("CUDA is not available to torch " + torch.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
EOF
[ "$FAILED" = 0 ] || { echo "gpu_check: the environment is not ready; see above" >&2; exit 1; }

# 2. The default pipeline in a temporary copy of the project (its tracked and unignored files).
PROJECT="$WORK/project"
mkdir -p "$PROJECT"
(cd "$REPO" && git ls-files -co --exclude-standard -z | grep -zv '^dvc.lock$' | xargs -0 tar -cf - 2>/dev/null) |
  tar -xf - -C "$PROJECT"
export MLFLOW_TRACKING_URI="sqlite:///$PROJECT/mlflow.db"
set_params() {  # dotted=value ... into params.yaml, as `dvc exp run -S` sets them
  "$PYTHON" - "$PROJECT/params.yaml" "$@" <<'EOF'
import sys, yaml
path, settings = sys.argv[1], sys.argv[2:]
params = yaml.safe_load(open(path))
for setting in settings:
    key, value = setting.split("=", 1)
    *parents, last = key.split(".")
    section = params
    for part in parents:
        section = section[part]
    section[last] = yaml.safe_load(value)
open(path, "w").write(yaml.safe_dump(params, sort_keys=False))
EOF
}
if [ "$QUICK" = 1 ]; then
  set_params data.shapes.num_images=40 data.shapes.image_size=32 preprocess.resize.to=32 model.base_channels=4 \
    train.epochs=1 train.batch_size=8 report.num_examples=2
fi
set_params train.device="$DEVICE" mlflow.log_model=true
step project bash -c "cd '$PROJECT' && git init -q && dvc config core.analytics false &&
  dvc config core.check_update false && git add -A &&
  git -c user.name=gpu-check -c user.email=gpu-check@localhost commit -qm 'gpu check'"
(cd "$PROJECT" && step dvc_repro dvc repro)

# 3. A torchvision model at a size users train on (toy sizes with --quick).
if [ "$QUICK" = 1 ]; then
  REALISTIC=(-S data.shapes.num_images=40 -S data.shapes.image_size=64 -S preprocess.resize.to=64 -S train.batch_size=8
             -S train.epochs=1)
else
  REALISTIC=(-S data.shapes.num_images=320 -S data.shapes.image_size=512 -S preprocess.resize.to=512
             -S train.batch_size=16 -S train.epochs=3)
fi
(cd "$PROJECT" && step dvc_exp_run dvc exp run -n gpu-check-deeplabv3 -S model.name=deeplabv3_mobilenet_v3_large \
  "${REALISTIC[@]}" -S mlflow.log_model=false)

# 4. Prediction on a few photos, and export with its parity check, from the default pipeline's model.
step photos "$PYTHON" -c "
import sys; sys.path[:0] = ['$PROJECT', '$PROJECT/src']
from pathlib import Path
from benchmarks.photos import write_photos
write_photos(Path('$WORK/photos'), {None: 3})"
(cd "$PROJECT" && step predict segpipe predict "$WORK/photos/images" --model models/model.pt --out "$WORK/predictions" \
  --device "$DEVICE")
(cd "$PROJECT" && step export segpipe export --model models/model.pt --out "$WORK/model.onnx")

# 5. The benchmarks' rows for this device.
if [ "$QUICK" = 1 ]; then
  BENCH=(--only evaluate --quick --devices "$DEVICE")
else
  BENCH=(--only train evaluate realistic --devices "$DEVICE" --realistic-steps 4 --realistic-rounds 3)
fi
(cd "$PROJECT" && step bench "$PYTHON" benchmarks/run.py "${BENCH[@]}" --json "$WORK/bench.json")

# 6. One JSON summary.
"$PYTHON" - "$WORK" "$PROJECT" "$OUT" "$DEVICE" "$QUICK" <<'EOF'
import json, sys
from pathlib import Path

work, project, out, device, quick = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
read = lambda path: json.loads(path.read_text()) if path.exists() else None  # noqa: E731
steps = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    steps[name] = {"rc": int(rc), "seconds": round(float(seconds), 1)}
summary = {"device": device, "quick": quick, "passed": all(s["rc"] == 0 for s in steps.values()), "steps": steps,
           "environment": (work / "logs/environment.log").read_text().splitlines(),
           "train": read(project / "metrics/train.json"), "eval": read(project / "metrics/eval.json"),
           "predictions": sorted(p.name for p in (work / "predictions").rglob("*") if p.is_file())
           if (work / "predictions").exists() else [],
           "onnx_bytes": (work / "model.onnx").stat().st_size if (work / "model.onnx").exists() else None}
bench = read(work / "bench.json")
summary["bench_rows"] = bench["rows"] if bench else None
try:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("segpipe").experiment_id],
                              order_by=["attributes.start_time ASC"])
    summary["mlflow_runs"] = [{"name": r.info.run_name, "status": r.info.status,
                               "system_metrics": sorted(k for k in r.data.metrics if k.startswith("system/")),
                               "speed": {k: v for k, v in r.data.metrics.items() if k.startswith("speed/")}}
                              for r in runs]
except Exception as exc:  # the summary is still written: the failure is in it
    summary["mlflow_runs"] = f"could not read the store: {exc}"
out.write_text(json.dumps(summary, indent=2, default=str))
print(json.dumps({k: summary[k] for k in ("device", "passed", "steps")}, indent=2))
EOF
[ "$KEEP" = 1 ] && echo "gpu_check: logs in $WORK/logs" >&2
echo "gpu_check: summary in $OUT" >&2
# From the steps' record, not $FAILED: the steps that run inside the project, in a ( cd ... ) subshell, set
# $FAILED only there.
awk -F'\t' '$2 != 0 { bad = 1 } END { exit bad }' "$STEPS"
