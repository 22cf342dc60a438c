#!/usr/bin/env bash
# The GPU check in one command: CUDA parity, engine latency/throughput, torch eager reference and the live service,
# printed as one table (bench/gpu_check.py; README "GPU" says how to stage what it needs on a GPU machine).
#
#   bash bench/gpu_check.sh              on the GPU machine, from the repository root, after staging (see README)
#   bash bench/gpu_check.sh --stage      on the GPU machine: keep the carried .ortgpu/cuda* parts and .gpucheck/*
#                                        folders in /tmp for the next call (for transfers over the size limit)
#   bash bench/gpu_check.sh --cpu-smoke  the same code on the CPU EP with small counts (tests run this)
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=/tmp/gpucheck-stage
case "${1:-}" in
  --cpu-smoke)
    shift
    exec "${PYTHON:-.venv/bin/python}" bench/gpu_check.py run --cpu-smoke "$@" ;;
  --stage)
    mkdir -p /tmp/ortstage "$STAGE"
    for part in .ortgpu/cuda*; do [ -d "$part" ] && cp "$part"/* /tmp/ortstage/; done
    for folder in .gpucheck/*; do [ -e "$folder" ] && cp -r "$folder" "$STAGE/"; done
    ls -la /tmp/ortstage "$STAGE"
    exit 0 ;;
esac
started=$(date +%s)
if [ ! -f .ortgpu/base/install.sh ]; then
  echo "missing .ortgpu/base: run ../shared/tools/ort-gpu-on-device/prepare.sh here and carry .ortgpu (README: GPU)" >&2
  exit 2
fi
# onnxruntime-gpu, cut to sm_90, from the staged parts (sets PYTHONPATH=/tmp/ortsite and LD_LIBRARY_PATH)
source .ortgpu/base/install.sh || exit 2
# the service's wheels that the GPU image lacks (bench/gpu_prepare.sh), carried or staged by earlier calls
SITE=/tmp/gpucheck-site
wheels=()
for dir in .gpucheck/wheels .gpucheck/wheels-av "$STAGE/wheels" "$STAGE/wheels-av"; do
  [ -d "$dir" ] && wheels+=("$dir"/*.whl)
done
if [ ${#wheels[@]} -gt 0 ]; then
  # one copy of each wheel (carried and staged copies have the same names)
  mapfile -t wheels < <(printf '%s\n' "${wheels[@]}" | awk -F/ '!seen[$NF]++')
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
    || exit 2
fi
export PYTHONPATH=$PWD:/tmp/ortsite:$SITE
export PYTHONUNBUFFERED=1
python3 bench/gpu_check.py run "$@"
status=$?
echo "gpu_check: $(( $(date +%s) - started )) s in all"
exit $status
