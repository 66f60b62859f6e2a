"""Base checkpoints: a model's full variables (trainable and frozen) plus its config, in Orbax.

Layout of a base checkpoint directory DIR:
  DIR/config.json   the ml_collections config (`to_json_best_effort`)
  DIR/params/       Orbax PyTree (StandardCheckpointer) of the trainable tree
  DIR/frozen/       Orbax PyTree of the frozen tree (vision tower, LM)
Both trees are in the unrolled layout (`xattn_{i}`, `lm/blocks_{i}`, `vision/resblocks_{i}`,
`perceiver/layers_{i}_attn`, ...) that the name maps use, and are read back in it; `weights/load.py` turns them into what a job runs (layout, dtypes, mesh).

A base checkpoint is whole or absent. A local directory is written under a temporary name and
renamed. An object store (gs://) has no atomic directory rename, so there config.json, which
marks a directory as a base checkpoint, is written last, after both trees are complete.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from flamingo_jax import paths, tree as tree_lib
from flamingo_jax.models import layer_groups

COLLECTIONS = ("params", "frozen")


def check_absent(path: str) -> None:
  if epath.Path(path).exists():
    raise FileExistsError(f"{paths.resolve(path)} exists; refusing to overwrite a checkpoint")


def save_base_checkpoint(path: str, config: ml_collections.ConfigDict, variables: Any) -> None:
  """Writes config and variables ({"params", "frozen"}, either layout) to `path` (local or
  gs://), which must not exist; whole or not at all (see the module docstring)."""
  path = paths.resolve(path)
  check_absent(path)
  variables = layer_groups.to_layout(jax.device_get(nn.unbox(variables)), config.model, scanned=False)
  remote = paths.is_remote(path)
  target = epath.Path(path if remote else f"{path}.tmp-{uuid.uuid4().hex[:8]}")
  try:
    target.mkdir(parents=True)
    with _writer() as checkpointer:
      for name in COLLECTIONS:
        tree = jax.tree_util.tree_map(np.asarray, variables[name])
        checkpointer.save(str(target / name), args=ocp.args.PyTreeSave(tree))
    (target / "config.json").write_text(config.to_json_best_effort(indent=2))
    if not remote:
      os.replace(target, path)
  except BaseException:
    if target.exists():
      target.rmtree()
    raise


def _writer() -> ocp.Checkpointer:
  """A synchronous PyTree writer that adds no copy of the weights: Orbax by default deep-copies
  host arrays (for asynchronous saves) and holds zstd buffers for every array at once, which
  would triple the peak memory of a conversion; weights barely compress anyway."""
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False))


def load_config(path: str) -> ml_collections.ConfigDict:
  config_file = epath.Path(path) / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"Not a flamingo_jax base checkpoint (no config.json): {paths.resolve(path)}")
  return ml_collections.ConfigDict(json.loads(config_file.read_text()))


def load_base_checkpoint(path: str, *, select: Callable[[str, tuple[str, ...]], bool] | None = None,
                         dtypes: dict[str, Any] | None = None) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, variables) of a base checkpoint, as numpy arrays in the unrolled layout.

  `select(collection, path)` restores only the leaves it accepts; `dtypes` ({"params": ...,
  "frozen": ...}) casts while reading, so e.g. fp32 frozen weights arrive as bf16 without an fp32
  copy in memory.
  """
  path = paths.resolve(path)
  config = load_config(path)
  variables = {}
  with ocp.PyTreeCheckpointer() as checkpointer:
    for name in COLLECTIONS:
      directory = epath.Path(path) / name
      if not directory.is_dir():
        raise FileNotFoundError(f"Base checkpoint {path} has no {name}/ item")
      directory = str(directory)
      stored = checkpointer.metadata(directory).item_metadata.tree
      leaves = {p: m for p, m in tree_lib.leaves(stored) if select is None or select(name, p)}
      if not leaves:
        variables[name] = {}
        continue
      dtype = (dtypes or {}).get(name)
      item, args = {}, {}
      for p, meta in leaves.items():
        tree_lib.put(item, p, np.zeros((), meta.dtype))  # only its structure and type matter
        tree_lib.put(args, p, ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.dtype(dtype) if dtype else None))
      variables[name] = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
          item=item, restore_args=args, partial_restore=select is not None))
  return config, variables

