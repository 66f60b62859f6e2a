#!/usr/bin/env bash
# Installs flamingo_jax and its dependencies into the current Python environment.
#   bash launch/setup.sh          # runtime only
#   bash launch/setup.sh test     # plus the PyTorch reference used as the test oracle
#   bash launch/setup.sh tpu      # plus jax[tpu] (on a Cloud TPU VM)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=${1:-}
case "$extra" in
  "") $PY -m pip install -q -e . ;;
  test)
    $PY -m pip install -q -e ".[test]"
    # open_flamingo's own pins are stale (it works with transformers 5.x): install it bare.
    $PY -m pip install -q --no-deps "open-flamingo==2.0.1" ;;
  tpu) $PY -m pip install -q -e ".[tpu]" ;;
  *) echo "usage: setup.sh [test|tpu]" >&2; exit 2 ;;
esac
