#!/usr/bin/env bash
# Runs a training job on every host of a Cloud TPU VM slice (each host runs the same command;
# jax.distributed.initialize() finds its peers). Usage:
#   TPU=my-v5e-16 ZONE=us-west4-a CONFIG=configs/of_3b.py:tpu WORKDIR=gs://bucket/of3b \
#     bash launch/tpu_vm.sh --config.data.laion.shards=... --config.data.mmc4.shards=... \
#                           --config.checkpoint.base=gs://bucket/of3b-base
# The repository must be at ~/flamingo_jax on every host (the first command copies it there).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
cd "$(dirname "$0")/.."
gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU:~/flamingo_jax"
# The remote shell parses --command again: quote every argument for it, so that braces
# ('{00000..09999}'), spaces and quotes reach the train CLI exactly as typed here.
args=$(printf '%q ' "--config=$CONFIG" "--workdir=$WORKDIR" "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd ~/flamingo_jax && bash launch/setup.sh tpu && python3 -m flamingo_jax.train $args"
