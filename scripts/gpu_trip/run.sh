#!/usr/bin/env bash
# One trip to a lent GPU, everything issue 4 still needs a GPU for, in one call of about 6 minutes:
#   run(command="bash scripts/gpu_trip/run.sh", carry=[".gpu"], timeout_s=540)
# after scripts/gpu_trip/prepare.sh here. Each step's report lands in $OUT (at most 8 files come back); a failing
# step does not stop the others, and the exit status says whether any failed.
#   1. the machine and versions;                                   env.txt
#   2. the GPU tests (each precision against CPU fp32, evaluate
#      with bitsandbytes, the teacher on the GPU, attention flags); pytest_gpu.txt
#   3. cuDNN's attention in GPU training: the full-scale student
#      (distilbert-base, 512 tokens, bf16) with torch's choice
#      and without cuDNN, side by side in one process;          training_attention.md / .json
#   4. the app's Benchmark button with fp32 / fp16 / int8 / int4
#      on the GPU, through the app's own API;                   app_benchmark.md
#   5. the CUDA training path again (bert-base -> distilbert-base
#      from their configs, bf16, the logit cache on and off): the
#      cache pass now runs the teacher in half precision.      gpu_check/gpu_check.json
# Off a GPU (a smoke test of the script itself): SMOKE=1 bash scripts/gpu_trip/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_trip}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
if [ -z "${SMOKE:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    || { echo "the wheels in .gpu/whl did not install"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  DEVICE=cuda PRECISIONS="fp32 fp16 int8 int4" REVIEWS=4000 LENGTH=512 ROWS=3000
else
  DEVICE=cpu PRECISIONS="fp32 int8" REVIEWS=32 LENGTH=64 ROWS=32
fi
failed=()
step() {  # step NAME COMMAND...: run, keep going, remember a failure
  local name=$1; shift
  echo "== $name: $*"
  "$@" || failed+=("$name")
}
step env bash -c "{ nvidia-smi || true; python3 -c 'import torch, transformers, gradio; print(torch.__version__, torch.version.cuda, transformers.__version__, gradio.__version__)'; python3 -c 'import bitsandbytes; print(\"bitsandbytes\", bitsandbytes.__version__)' || true; nproc; } > $OUT/env.txt 2>&1; cat $OUT/env.txt"
step pytest bash -c "python3 -m pytest -q -p no:cacheprovider -k gpu -rs tests/test_inference.py tests/test_distill.py > $OUT/pytest_gpu.txt 2>&1; rc=\$?; tail -5 $OUT/pytest_gpu.txt; exit \$rc"
step training_attention python3 benchmarks/gpu_training_attention.py --model arch:distilbert-base-uncased \
  --tokenizer .gpu/tokenizer --data .gpu/reviews.parquet --reviews $REVIEWS --max_length $LENGTH --device $DEVICE \
  --out "$OUT/training_attention"
step app_benchmark python3 scripts/gpu_trip/app_benchmark.py --device $DEVICE --precision $PRECISIONS \
  --out "$OUT/app_benchmark"
step gpu_check python3 benchmarks/gpu_check.py --data .gpu/reviews.parquet --tokenizer .gpu/tokenizer --rows $ROWS \
  --max_length $LENGTH --out "$OUT/gpu_check"
echo "failed steps: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
