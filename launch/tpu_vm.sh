#!/usr/bin/env bash
# Plans, then runs, a training job on every host of a Cloud TPU VM slice (each host runs the same
# command; jax.distributed.initialize() finds its peers). Usage:
#   TPU=my-v5e-16 ZONE=us-west4-a TOPOLOGY=v5e:4x4 CONFIG=configs/of_3b.py:tpu \
#     WORKDIR=gs://bucket/of3b bash launch/tpu_vm.sh --config.data.laion.shards=... \
#       --config.data.mmc4.shards=... --config.checkpoint.base=gs://bucket/of3b-base
# First, here, `python -m flamingo_jax.plan` compiles the step for TOPOLOGY (it needs the TPU
# compiler: pip install "jax[tpu]==<jax version>"; no TPU) and the job is not started if it
# does not fit. PLAN=0 skips that. The repository is copied to ~/flamingo_jax on every host.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
cd "$(dirname "$0")/.."
if [ "${PLAN:-1}" != 0 ]; then
  : "${TOPOLOGY:?set TOPOLOGY to the topology of the slice (e.g. v5e:4x4), or PLAN=0 to launch unplanned}"
  if ! python3 -m flamingo_jax.plan "--config=$CONFIG" "--topology=$TOPOLOGY" "$@"; then
    echo "tpu_vm.sh: not launching: the plan above says $CONFIG does not fit $TOPOLOGY, or could not be made" >&2
    exit 1
  fi
fi
gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all . "$TPU:~/flamingo_jax"
# The remote shell parses --command again: quote every argument for it, so that braces
# ('{00000..09999}'), spaces and quotes reach the train CLI exactly as typed here.
args=$(printf '%q ' "--config=$CONFIG" "--workdir=$WORKDIR" "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd ~/flamingo_jax && bash launch/setup.sh tpu && python3 -m flamingo_jax.train $args"
