"""What a compile told the planner, kept on disk, so that planning the same step again (a
relaunch, `launch/tpu_vm.sh`, a search) takes seconds instead of minutes.

JAX's persistent compilation cache cannot serve here: on a machine without a TPU the compile-only
client cannot load a TPU executable ("PjRtCompiler must be constructed with a Client to call
DeserializeLoadedExecutable"), and an executable it loads comes without the partitioned module
the communication count reads. A plan needs only the compiled program's numbers, so those are
what is kept: its memory analysis, cost analysis and communication, or the compiler's
out-of-memory message. Local plans are keyed by their device count and kind.

  key = cache.key(lowered, topology)      # the lowered program, jax, libtpu, compiler flags
  analysis = cache.read(directory, key)   # None when absent (or unreadable: then compiled again)
  cache.write(directory, key, analysis)   # whole or not at all
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from typing import Any

import jax


def key(lowered, topology: str) -> str:
  """A hash of everything the compiled program depends on: the lowered step (shapes, shardings,
  the mesh, the code's own source locations), the topology, jax's and libtpu's versions and the
  compiler flags in the environment."""
  h = hashlib.sha256()
  try:
    libtpu = importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    libtpu = ""
  for part in (topology, jax.__version__, libtpu, os.environ.get("XLA_FLAGS", ""),
               os.environ.get("LIBTPU_INIT_ARGS", "")):
    h.update(part.encode() + b"\0")
  h.update(lowered.as_text().encode())
  return h.hexdigest()


def _path(directory: str, digest: str) -> str:
  return os.path.join(os.path.expanduser(directory), "plans", f"{digest}.json")


def read(directory: str, digest: str) -> dict[str, Any] | None:
  try:
    with open(_path(directory, digest)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write(directory: str, digest: str, analysis: dict[str, Any]) -> None:
  path = _path(directory, digest)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False, suffix=".tmp") as f:
    json.dump(analysis, f)
  os.replace(f.name, path)
