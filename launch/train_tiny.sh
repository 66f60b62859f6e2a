#!/usr/bin/env bash
# The main job on a fresh machine: install, then train the tiny Flamingo on CPU on synthetic
# LAION/MMC4 shards (written to runs/synthetic_shards on first use). About 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec python3 -m flamingo_jax.train --config=configs/tiny.py --workdir="${WORKDIR:-runs/tiny}" "$@"
