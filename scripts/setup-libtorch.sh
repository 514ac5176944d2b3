#!/usr/bin/env bash
# Makes a Python venv with torch==2.9.0 from PyPI (the libtorch that burn-tch 0.22.1 wants) and
# prints the environment a `--features tch` build needs. Nothing is downloaded from outside PyPI:
# tch's own libtorch download is never reached because LIBTORCH points at the wheel.
#
#   scripts/setup-libtorch.sh [VENV_DIR]      (default: .venv-torch)
#   eval "$(scripts/setup-libtorch.sh)"      # then: cargo build --release --features tch
set -euo pipefail
VENV="${1:-${SIAM_TORCH_VENV:-.venv-torch}}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" >&2
fi
if ! "$VENV/bin/python" -c 'import torch,sys; sys.exit(0 if torch.__version__.startswith("2.9.0") else 1)' 2>/dev/null; then
  "$VENV/bin/pip" install -q --upgrade pip >&2
  # The PyPI wheel is the CUDA 12.8 build (~3 GB with its nvidia-* wheels); it also runs on a CPU.
  "$VENV/bin/pip" install -q "torch==2.9.0" "torchvision==0.24.0" >&2
fi
TORCH="$("$VENV/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
echo "export LIBTORCH=\"$TORCH\""
echo "export LD_LIBRARY_PATH=\"$TORCH/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
echo "# now: cargo build --release --features tch   (the binary also carries an rpath to \$LIBTORCH/lib)"
