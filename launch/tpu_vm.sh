#!/usr/bin/env bash
# Plans, then runs, a training job on every host of a Cloud TPU VM slice, or of several slices
# (multislice), each host running the same command; jax.distributed.initialize() finds its peers.
# One slice (a TPU VM):
#   TPU=my-v5e-16 ZONE=us-west4-a TOPOLOGY=v5e:4x4 CONFIG=configs/of_3b.py:tpu \
#     WORKDIR=gs://bucket/of3b bash launch/tpu_vm.sh --config.data.laion.shards=... \
#       --config.data.mmc4.shards=... --config.checkpoint.base=gs://bucket/of3b-base
# Several slices (a queued resource created with --node-count=SLICES; its runtime sets the
# MEGASCALE_* variables that join the slices over DCN):
#   QR=my-qr SLICES=2 ZONE=us-west4-a TOPOLOGY=v5e:16x16 CONFIG=configs/of_9b.py:tpu \
#     WORKDIR=gs://bucket/of9b bash launch/tpu_vm.sh --config.mesh.fsdp=256 ...
# TOPOLOGY is one slice's. First, here, `python -m flamingo_jax.plan` compiles the step for it (it
# needs the TPU compiler: pip install "jax[tpu]==<jax version>"; no TPU) and the job is not
# started if it does not fit. PLAN=0 skips that. The repository is copied to ~/flamingo_jax on
# every host. docs/pods.md has the whole story.
set -euo pipefail
: "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
if [ -n "${QR:-}" ]; then
  : "${SLICES:?set SLICES to the number of slices (nodes) of the queued resource $QR}"
  # --batch-size=all: gcloud's default starts 64 hosts and waits for them before the next 64,
  # but each trainer waits for all its peers: with more than 64 hosts nothing would ever finish.
  kind=queued-resources name=$QR hosts=(--node=all --worker=all --batch-size=all) slices=$SLICES
else
  : "${TPU:?set TPU to the TPU VM name (one slice), or QR and SLICES for a queued resource of several}"
  kind=tpu-vm name=$TPU hosts=(--worker=all) slices=1
fi
cd "$(dirname "$0")/.."
if [ "${PLAN:-1}" != 0 ]; then
  : "${TOPOLOGY:?set TOPOLOGY to the topology of a slice (e.g. v5e:4x4), or PLAN=0 to launch unplanned}"
  if ! python3 -m flamingo_jax.plan "--config=$CONFIG" "--topology=$TOPOLOGY" "--slices=$slices" "$@"; then
    echo "tpu_vm.sh: not launching: the plan above says $CONFIG does not fit $slices x $TOPOLOGY, or could not be made" >&2
    exit 1
  fi
fi
gcloud compute tpus "$kind" scp --recurse --zone "$ZONE" "${hosts[@]}" . "$name:~/flamingo_jax"
# The remote shell parses --command again: quote every argument for it, so that braces
# ('{00000..09999}'), spaces and quotes reach the train CLI exactly as typed here.
args=$(printf '%q ' "--config=$CONFIG" "--workdir=$WORKDIR" "$@")
gcloud compute tpus "$kind" ssh "$name" --zone "$ZONE" "${hosts[@]}" --command \
  "cd ~/flamingo_jax && bash launch/setup.sh tpu && python3 -m flamingo_jax.train $args"
