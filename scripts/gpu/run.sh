#!/usr/bin/env bash
# Runs on a device machine (from the repository root, target/gpu/pack.tar.xz carried there; see
# pack.sh): the CUDA tests (the ignored ones, which need a GPU, and the rest), the digits demo
# (MLP and CNN) on CUDA and on the CPU, and the CUDA benchmark; where target/gpu/wheels.tar was carried, hgq2 on torch-CUDA on the same work. Output: the log on stdout, JSON rows in
# $OUT (or target/gpu/out) for benches/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=${OUT:-$root/target/gpu/out}
mkdir -p "$work"
tar -C target/gpu -xJf target/gpu/pack.tar.xz
bin=target/gpu/pack/bin
torch_lib=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HGQ_GOLDEN_ROOT="$root/tests/data" HGQ_GOLDEN_DIR="$root/tests/data/golden"
# The default route: our kernel once its check on the device passes (cuda::check_kernel), which
# the tests then expect (a failed check shows as the torch-ops route); the bench times both.
unset HGQ_CUDA_KERNEL
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
status=0
# The kernel's host build (CPU tests, run on the build machine too) needs a C++ compiler.
skip=()
if ! command -v "${CXX:-c++}" >/dev/null; then
  echo "no C++ compiler here: the host-build tests are left to the build machine"
  skip=(--skip host_build --skip column_sums --skip per_row --skip float64)
fi
# The distributed tests' Python rank: the device's torch.
export HGQ_TORCH_PYTHON=python3
for t in cuda_route cuda_kernel golden_backend quantizer_inputs quantizer_training optim fixed_golden distributed; do
  echo "== $t"
  "$bin/$t" --include-ignored "${skip[@]}" 2>&1 | tail -40 | tee "$work/$t.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
for model in mlp cnn; do
  for device in cuda cpu; do
    echo "== demo --model $model --device $device"
    t0=$(date +%s.%N)
    timeout 300 "$bin/demo" --model "$model" --device "$device" --epochs "${DEMO_EPOCHS:-200}" \
      --data tests/data/digits/digits.csv.gz --out "$work/demo-$model-$device" 2>&1 |
      grep -E '"test_accuracy"|"ebops"|"train_seconds"|Error' || status=1
    echo "wall $(python3 -c "print(round($(date +%s.%N) - $t0, 2))") s"
  done
done
echo "== demo on CUDA as a data-parallel rank (NCCL)"
WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 timeout 300 \
  "$bin/demo" --device cuda --epochs 20 --data tests/data/digits/digits.csv.gz \
  --out "$work/demo-ddp-cuda" 2>&1 | grep -E 'rank|"test_accuracy"|Error' || status=1
echo "== hgq-bench-cuda"
"$bin/hgq-bench-cuda" --reps 20 | tee "$work/bench_cuda.jsonl" || status=1
if [ -f target/gpu/wheels.tar ]; then
  echo "== hgq2 on torch-CUDA"
  tar -C target/gpu -xf target/gpu/wheels.tar
  python3 -m pip install --quiet --no-index --find-links target/gpu/wheels \
    hgq2 keras quantizers 2>&1 | tail -3
  for rows in 1024 16384; do
    KERAS_BACKEND=torch python3 benches/hgq2_ref.py --device cuda --rows "$rows" \
      | tee -a "$work/hgq2_torch_cuda.jsonl" || status=1
  done
fi
exit $status
