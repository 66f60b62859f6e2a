"""Process start-up shared by the entry points: pick the backend and join a multi-host job."""
from __future__ import annotations

import os

# Set on every host of a multi-host GPU (or CPU) job; TPU VM slices need none of them.
MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


COMPILE_CACHE_ENV = "FLAMINGO_JAX_COMPILE_CACHE"


def use_compile_cache() -> str | None:
  """Turns on JAX's persistent compilation cache, so that a restarted job (a preemption, a second
  `generate`) reads its compiled programs instead of compiling again. The directory: JAX's own
  JAX_COMPILATION_CACHE_DIR if set, else FLAMINGO_JAX_COMPILE_CACHE (local or gs://; "0" turns
  it off), else ~/.cache/flamingo_jax/xla. Returns it, or None when off."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  default = os.path.join(os.path.expanduser("~"), ".cache", "flamingo_jax", "xla")
  directory = os.environ.get(COMPILE_CACHE_ENV, default)
  if directory in ("", "0"):
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory


def start(backend: str) -> None:
  """Selects `backend` ('cpu', 'gpu' or 'tpu') and, on a multi-host job, joins it.

  Every host runs the same command. On TPU VMs `jax.distributed.initialize()` finds its peers
  by itself; elsewhere the job is described by JAX_COORDINATOR_ADDRESS (host:port of process 0),
  JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if backend == "cpu":
    jax.config.update("jax_platforms", "cpu")
  use_compile_cache()
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
