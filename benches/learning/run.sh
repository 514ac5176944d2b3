#!/usr/bin/env bash
# The learning-quality bench (BENCHMARKS.md, "Learning quality"): trains siam and the PyTorch
# reference (reference.py) on a CIFAR-10 binary folder, one row after the other, and evaluates
# each model on the held-out photos (`test_batch.bin`): zero-shot top-1, recall@1 both ways,
# wall time and training images/s. Rows come from rows.txt (NAME SIDE FLAGS...).
#
# Usage (from the repository root):
#   benches/learning/run.sh [ROW_REGEX]
# Environment:
#   SIAM_LEARN_DATA    dataset folder (default ../shared/data/cifar10-dev)
#   SIAM_LEARN_EPOCHS  epochs per row (default 8, the issue's recipe)
#   SIAM_LEARN_ROWS    rows file (default benches/learning/rows.txt)
#   SIAM_LEARN_OUT     results folder (default target/learning)
#   SIAM_LEARN_THREADS threads per side (default 2: torch.set_num_threads, RAYON_NUM_THREADS
#                      for burn's pool and siam's --threads for decoding)
#   SIAM_LEARN_EXTRA   extra flags for every siam row (e.g. "--xbm 1024")
#   SIAM_PYTHON        python with torch==2.9.0, open_clip_torch==3.3.0,
#                      pytorch-metric-learning==2.9.0 (default python3)
#   SIAM_BIN           the siam binary (default: built with `cargo build --release`)
# Rows run one at a time; results/NAME.json per row and
# table.md (written by table.py) land in SIAM_LEARN_OUT.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
data="${SIAM_LEARN_DATA:-$root/../shared/data/cifar10-dev}"
epochs="${SIAM_LEARN_EPOCHS:-8}"
rows="${SIAM_LEARN_ROWS:-$here/rows.txt}"
out="${SIAM_LEARN_OUT:-$root/target/learning}"
python="${SIAM_PYTHON:-python3}"
filter="${1:-.}"
threads="${SIAM_LEARN_THREADS:-2}"
mkdir -p "$out/results"
if [ -z "${SIAM_BIN:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin siam)
  SIAM_BIN="$root/target/release/siam"
fi

run_siam() { # NAME FLAGS...
  local name="$1"; shift
  local dir="$out/runs/$name"
  rm -rf "$dir"
  local t0; t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  local ep=(--epochs "$epochs")
  [[ " $* " == *" --epochs "* ]] && ep=()
  RAYON_NUM_THREADS="$threads" "$SIAM_BIN" train --threads "$threads" --data "$data" --arch "$here/tiny_open_clip.json" "${ep[@]}" \
    --no-index --out "$dir" --report "$dir.train.json" ${SIAM_LEARN_EXTRA:-} "$@" 2>&1 | tee "$dir.log" | grep -v '^\s*$' | tail -n 40
  RAYON_NUM_THREADS="$threads" "$SIAM_BIN" eval --threads "$threads" --model "$dir" --data "$data" --no-linear-probe --json "$dir.eval.json" >/dev/null
  local t1; t1=$(date +%s.%N)
  "$python" "$here/table.py" --siam "$name" "$dir.train.json" "$dir.eval.json" \
    "$(echo "$t1 - $t0" | bc)" "$*" >"$out/results/$name.json"
}

run_pytorch() { # NAME FLAGS...
  local name="$1"; shift
  "$python" "$here/reference.py" --data "$data" --epochs "$epochs" --threads "$threads" \
    --json "$out/results/$name.json" "$@" | tail -n 3 | cut -c1-300
}

while read -r name side flags; do
  [[ "$name" =~ $filter ]] || continue
  echo "== $name ($side, $epochs epochs): $flags"
  mkdir -p "$out/runs"
  # shellcheck disable=SC2086
  case "$side" in
    siam) run_siam "$name" $flags ;;
    pytorch) run_pytorch "$name" $flags ;;
    *) echo "rows file: row $name has side '$side' (want siam or pytorch)" >&2; exit 2 ;;
  esac </dev/null
done < <(grep -v '^\s*#' "$rows" | grep -v '^\s*$')
"$python" "$here/table.py" --table "$out/results" | tee "$out/table.md"
