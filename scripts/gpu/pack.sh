#!/usr/bin/env bash
# Builds, on this machine, everything the GPU checks run on a device machine (which has the same
# torch 2.11 in its python3 but no Rust and no network): the release binaries of the CUDA tests,
# of `hgq-bench-cuda` and of the digits demo into target/gpu/pack.tar.xz (about 10 MiB), and with
# --reference a wheelhouse for hgq2 on Keras' torch backend into target/gpu/wheels.tar (27 MiB)
# for the device's Python: its version X.Y as the next argument (`python3 --version` there),
# else this machine's.
#   scripts/gpu/pack.sh [--reference [X.Y]]   then carry target/gpu/*.tar* and run scripts/gpu/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d .venv/libtorch ] || cargo xtask setup
out=target/gpu
rm -rf "$out" && mkdir -p "$out/pack/bin"
tests=(cuda_route cuda_kernel golden_backend quantizer_inputs quantizer_training optim fixed_golden distributed)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
# The test executables, by name (cargo prints their paths in its JSON messages).
cargo test --release -p hgq-torch --no-run "${args[@]}" --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["test"] and m.get("executable"):
        print(m["target"]["name"], m["executable"])' |
  while read -r name exe; do
    cp "$exe" "$out/pack/bin/$name"
  done
cargo build --release -p hgq-torch --bin hgq-bench-cuda --example demo
cp target/release/hgq-bench-cuda target/release/examples/demo "$out/pack/bin/"
strip "$out"/pack/bin/*
XZ_OPT=-9 tar -C "$out" -cJf "$out/pack.tar.xz" pack
if [ "${1:-}" = --reference ]; then
  # hgq2 on Keras' torch backend, for the reference's CUDA timings (torch itself is there);
  # binary wheels for the device's Python version where it is given.
  target=()
  if [ -n "${2:-}" ]; then
    target=(--only-binary=:all: --python-version "$2" --platform manylinux_2_28_x86_64)
  fi
  python3 -m pip download --quiet --no-deps "${target[@]}" --dest "$out/wheels" \
    hgq2==0.2.0 keras==3.15.1 quantizers==1.2.2 absl-py rich markdown-it-py mdurl pygments \
    namex h5py optree ml_dtypes numpy packaging typing_extensions
  tar -C "$out" -cf "$out/wheels.tar" wheels
fi
ls -la "$out"/pack/bin && du -sh "$out"/*.tar*
