#!/usr/bin/env bash
# Everything the GPU machine runs, in one call, within about 8 minutes:
#
#   bash bench/gpu/run.sh OUTDIR [--dry-run]
#
# 1. installs the wheels of .whl/ (bench/gpu/wheelhouse.sh builds them) offline and without
#    dependencies, so the machine's own torch and triton are never touched, then neox itself;
# 2. runs the GPU kernel tests (files missing from this checkout are skipped);
# 3. runs bench/train_gpu.py, bench/attention.py and bench/generate.py's GPU mode, each under its
#    own time limit.
# Every step writes OUTDIR/<step>.log; OUTDIR/summary.txt lists each step's exit status and
# seconds, and a failed step does not stop the ones after it. --dry-run prints the plan (and
# checks the wheelhouse) without installing or running anything.
# Limits can be changed through the environment: NEOX_GPU_T_TESTS, _TRAIN, _ATTN, _GEN (seconds);
# NEOX_WHEELHOUSE points at another wheel folder.
set -uo pipefail

usage() { echo "usage: bash bench/gpu/run.sh OUTDIR [--dry-run]" >&2; exit 2; }
OUT="" DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) usage ;;
    -*) echo "unknown option $arg" >&2; usage ;;
    *) [ -z "$OUT" ] && OUT=$arg || usage ;;
  esac
done
[ -n "$OUT" ] || usage

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python}
WHL=${NEOX_WHEELHOUSE:-$ROOT/.whl}
T_TESTS=${NEOX_GPU_T_TESTS:-90}
T_TRAIN=${NEOX_GPU_T_TRAIN:-270}
T_ATTN=${NEOX_GPU_T_ATTN:-60}
T_GEN=${NEOX_GPU_T_GEN:-75}
KERNEL_TESTS=(tests/test_kernels.py tests/test_attention.py tests/test_precision.py)

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

# step NAME LIMIT CMD...: run CMD under LIMIT seconds, log to OUTDIR/NAME.log, record the status.
step() {
  local name=$1 limit=$2
  shift 2
  if [ "$DRY" = 1 ]; then
    printf 'plan %-10s %4ss  %s\n' "$name" "$limit" "$*" | tee -a "$SUMMARY"
    return 0
  fi
  local t0=$SECONDS rc
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%-10s rc=%-3s %4ss%s\n' "$name" "$rc" "$((SECONDS - t0))" \
    "$([ "$rc" = 124 ] && echo '  (time limit)')" | tee -a "$SUMMARY"
  tail -n 25 "$OUT/$name.log"
  return 0
}

# --- 1. install
if ! ls "$WHL"/*.whl >/dev/null 2>&1; then
  echo "no wheels in $WHL: run bash bench/gpu/wheelhouse.sh first (on a machine with network)" >&2
  exit 1
fi
if ls "$WHL" | grep -Eiq '^(torch|triton)-'; then
  echo "refusing: $WHL holds a torch or triton wheel" >&2
  exit 1
fi
TORCH_BEFORE=$($PY -c "import torch; print(torch.__version__)" 2>/dev/null || echo none)
# setuptools stays in the wheelhouse for the build below; the environment keeps its own.
mapfile -t WHEELS < <(ls "$WHL"/*.whl | grep -Ev '/(setuptools|wheel)-[0-9]')
step install 120 "$PY" -m pip install --no-index --find-links "$WHL" --no-deps "${WHEELS[@]}"
# neox itself, built with the wheelhouse's setuptools (no index): without its dependencies.
step neox 60 "$PY" -m pip install --no-index --find-links "$WHL" --no-deps "$ROOT"
if [ "$DRY" = 0 ]; then
  TORCH_AFTER=$($PY -c "import torch; print(torch.__version__)" 2>/dev/null || echo none)
  if [ "$TORCH_BEFORE" != "$TORCH_AFTER" ]; then
    echo "torch changed from $TORCH_BEFORE to $TORCH_AFTER: stopping" | tee -a "$SUMMARY" >&2
    exit 1
  fi
  $PY - >"$OUT/env.txt" 2>&1 <<'PY'
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for p in ("triton", "deepspeed", "pydantic", "liger-kernel", "transformers", "neoxcli"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "missing")
PY
  cat "$OUT/env.txt"
fi
export DS_ACCELERATOR=cuda TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$OUT/inductor-cache}

# --- 2. GPU kernel tests (those this checkout has): all of them, not up to the first failure, so one
#        call lists every failing test (-rfE names them at the end of the log)
present=()
for t in "${KERNEL_TESTS[@]}"; do
  if [ -f "$t" ]; then present+=("$t"); else echo "skip $t (not in this checkout)" | tee -a "$SUMMARY"; fi
done
if [ "${#present[@]}" -gt 0 ]; then
  step tests "$T_TESTS" "$PY" -m pytest "${present[@]}" -q -rfE --timeout 60 -p no:cacheprovider
fi

# --- 3. benchmarks
step train "$T_TRAIN" "$PY" bench/train_gpu.py --json "$OUT/train_gpu.json" --budget "$((T_TRAIN - 20))"
if [ -f bench/attention.py ]; then
  step attention "$T_ATTN" "$PY" bench/attention.py --device cuda
else
  echo "skip attention (bench/attention.py not in this checkout)" | tee -a "$SUMMARY"
fi
if grep -q -- "--bound" bench/generate.py 2>/dev/null; then
  step generate "$T_GEN" "$PY" bench/generate.py --bound --device cuda
else
  echo "skip generate (bench/generate.py has no GPU mode in this checkout)" | tee -a "$SUMMARY"
fi
[ "$DRY" = 1 ] || { echo "results in $OUT"; cat "$SUMMARY"; }
