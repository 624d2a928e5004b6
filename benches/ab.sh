#!/usr/bin/env bash
# Times two builds of the bench binaries in one run, alternating, on the same machine:
#   benches/ab.sh OLD_TARGET_RELEASE NEW_TARGET_RELEASE [ROUNDS]
# e.g. build an older commit in a worktree (`git worktree add /tmp/old REV`, then in it
# `LIBTORCH=$PWD/.venv/libtorch cargo build --release -p hgq-golden --bin hgq-bench-core
# -p hgq-torch --bin hgq-bench-torch`, LIBTORCH pointing at this checkout's .venv/libtorch) and
# compare `/tmp/old/target/release` with `target/release`. Prints the binaries' JSON rows under
# `== round N old|new core|torch` headers.
set -euo pipefail
old=${1:?old target/release folder}; new=${2:?new target/release folder}; rounds=${3:-3}
here="$(cd "$(dirname "$0")/.." && pwd)"
export LD_LIBRARY_PATH="$(readlink -f "$here/.venv/libtorch")/lib"
for round in $(seq "$rounds"); do
  for side in old new; do
    d=$old; [ "$side" = new ] && d=$new
    echo "== round $round $side core"; "$d/hgq-bench-core" --reps 31 2>/dev/null | grep '^{'
    echo "== round $round $side torch"
    "$d/hgq-bench-torch" --reps 31 --json --threads 1 2>/dev/null | grep '^{' | grep -v 'torch-coef\|torch-ops'
  done
done
