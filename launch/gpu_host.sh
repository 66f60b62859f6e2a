#!/usr/bin/env bash
# Runs training on a GPU host (all local GPUs). For several hosts, run it on each with
# JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i set.
#   CONFIG=configs/of_3b.py:gpu WORKDIR=/data/runs/of3b bash launch/gpu_host.sh --config.data...
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
cd "$(dirname "$0")/.."
python3 -m pip install -q -e . "jax[cuda12]"
exec python3 -m flamingo_jax.train --config="$CONFIG" --workdir="$WORKDIR" "$@"
