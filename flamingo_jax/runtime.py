"""Process start-up shared by the entry points: pick the backend and join a multi-host job."""
from __future__ import annotations

import os

# Set on every host of a multi-host GPU (or CPU) job; TPU VM slices need none of them.
MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def start(backend: str) -> None:
  """Selects `backend` ('cpu', 'gpu' or 'tpu') and, on a multi-host job, joins it.

  Every host runs the same command. On TPU VMs `jax.distributed.initialize()` finds its peers
  by itself; elsewhere the job is described by JAX_COORDINATOR_ADDRESS (host:port of process 0),
  JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if backend == "cpu":
    jax.config.update("jax_platforms", "cpu")
  given = [k for k in MULTIHOST_ENV if os.environ.get(k)]
  if given:
    if len(given) < len(MULTIHOST_ENV):
      missing = sorted(set(MULTIHOST_ENV) - set(given))
      raise ValueError(f"A multi-host job needs all of {', '.join(MULTIHOST_ENV)}; {', '.join(missing)} "
                       "not set")
    jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif backend == "tpu":
    jax.distributed.initialize()
