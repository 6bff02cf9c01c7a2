#!/usr/bin/env bash
# Build .whl/ (git-ignored): every wheel bench/gpu/run.sh installs offline on the GPU machine.
#
# That machine has its own Python 3.12 with torch, triton, transformers, tokenizers, typer, rich,
# tiktoken, safetensors and tensorboard (and what they pull in: numpy, pyyaml, packaging, tqdm,
# huggingface-hub, pygments, ...), no network, and lacks what is listed below (pytest included). Wheels are fetched for
# CPython 3.12 on manylinux x86_64, binary only, each with --no-deps so nothing (torch above all)
# comes along unasked; DeepSpeed ships only a source distribution, so its wheel is built here
# (pure Python: its CUDA ops are JIT-built where they are used, and neox uses none).
#
#   bash bench/gpu/wheelhouse.sh            # -> .whl/, prints its size
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=.whl
PY=${PYTHON:-python}
mkdir -p "$OUT"
rm -f "$OUT"/*.whl

# name==version where the version matters (DeepSpeed pins what neox is tested with).
PACKAGES=(
  "pydantic>=2.5,<3" pydantic-core annotated-types typing-inspection
  zstandard "ftfy>=6" wcwidth
  liger-kernel
  hjson msgpack ninja py-cpuinfo psutil einops
  pytest pluggy iniconfig pytest-timeout
  setuptools  # only to build neox's own wheel there (pip's build isolation, offline)
)
# pydantic needs the pydantic-core it was released with: resolve the pair here, fetch both.
CORE=$($PY - <<'PY'
import importlib.metadata as m
req = [r for r in m.requires("pydantic") if r.startswith("pydantic-core")]
print(req[0].split(";")[0].replace(" ", "") if req else "pydantic-core")
PY
)
PYD=$($PY -c "import importlib.metadata as m; print('pydantic==' + m.version('pydantic'))")
PACKAGES[0]=$PYD
PACKAGES[1]=$CORE

for pkg in "${PACKAGES[@]}"; do
  $PY -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    -d "$OUT" "$pkg"
done
$PY -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT" "deepspeed==0.19.8"

if ls "$OUT" | grep -Eiq '^(torch|triton|nvidia_(cu|nccl|cudnn))'; then
  echo "refusing: a torch/triton/CUDA wheel got into $OUT" >&2
  exit 1
fi
ls -1 "$OUT"
du -sh "$OUT"
