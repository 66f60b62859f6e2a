"""Trains Flamingo.

  python -m flamingo_jax.train --config=configs/tiny.py --workdir=runs/tiny
  python -m flamingo_jax.train --config=configs/of_3b.py:tpu --workdir=gs://bucket/run \
      --config.data.mmc4.shards=... --config.checkpoint.base=...

A restarted job resumes from the latest checkpoint in --workdir by itself. A multi-host job runs
the same command on every host (see flamingo_jax/runtime.py for how the hosts find each other).
"""
from __future__ import annotations

import time

_STARTED = time.time()  # the goodput account's start-up counts from here

from flamingo_jax import cli  # first: its quiet start precedes the libraries' imports  # noqa: E402
from absl import flags
from ml_collections import config_flags

from flamingo_jax import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (optionally file.py:arg).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and TensorBoard logs go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cfg = _CONFIG.value
  runtime.start(cfg.backend)
  from flamingo_jax.train import loop  # pylint: disable=g-import-not-at-top
  loop.train_and_evaluate(cfg, _WORKDIR.value, started=_STARTED)


if __name__ == "__main__":
  cli.run(main)
