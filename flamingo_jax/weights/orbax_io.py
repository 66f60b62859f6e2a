"""Base checkpoints: a model's full variables (trainable and frozen) plus its config, in Orbax.

Layout: `DIR/config.json` (the ml_collections config) and `DIR/variables` (an Orbax PyTree with
`params` and `frozen`, in the unrolled layout; scanned configs are converted on load). Written to
`DIR.tmp` and renamed, so a base checkpoint is whole or absent.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from flamingo_jax.models import layer_groups


def save_base_checkpoint(path: str, config: ml_collections.ConfigDict, variables: Any) -> None:
  """Writes config and variables atomically to `path` (which must not exist)."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; refusing to overwrite a checkpoint")
  variables = jax.device_get(nn.unbox(variables))
  if config.model.scan_layers:
    variables = layer_groups.to_unrolled(variables, config.model)
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(tmp, "variables"), jax.tree_util.tree_map(np.asarray, variables))
  checkpointer.wait_until_finished()
  checkpointer.close()
  os.replace(tmp, path)


def load_base_checkpoint(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, variables) from `save_base_checkpoint`'s layout; scanned if the config says so."""
  path = os.path.abspath(path)
  config_file = os.path.join(path, "config.json")
  if not os.path.exists(config_file):
    raise FileNotFoundError(f"Not a flamingo_jax base checkpoint (no config.json): {path}")
  with open(config_file) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(os.path.join(path, "variables"))
  if config.model.scan_layers:
    variables = layer_groups.to_scanned(variables, config.model)
  return config, variables
