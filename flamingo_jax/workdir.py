"""The training workdir's format: what a run leaves in it, and reading it back.

  <workdir>/train_config.json                 the run's whole config (RUN_CONFIG)
  <workdir>/checkpoints/<step>/state/         Orbax: TrainState {step, params, opt_state}
  <workdir>/checkpoints/<step>/data_<name>/   Grain: dataset <name>'s position, a JSON per process
  <workdir>/checkpoints/damaged/<step>/       steps that did not restore, set aside
  <workdir>/events.out.tfevents.*             TensorBoard scalars

Training writes it (`train/checkpoint.py`); generation, evaluation, export and sweeps read it
through this module, so none of them imports the trainer.
"""
from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from flamingo_jax import paths, tree

# The run's whole config, written by training into its workdir: what a tool reading the workdir
# needs to rebuild the model (the frozen weights come from its base checkpoint or its seed).
RUN_CONFIG = "train_config.json"
CHECKPOINTS = "checkpoints"
STATE_ITEM = "state"
DAMAGED = "damaged"  # checkpoints that did not restore, kept for a person to look at


def data_item(name: str) -> str:
  """The checkpoint item that holds dataset `name`'s iterator state."""
  return f"data_{name}"


def checkpoint_dir(workdir: str) -> epath.Path:
  return epath.Path(paths.resolve(workdir)) / CHECKPOINTS


def saved_steps(workdir: str) -> list[int]:
  """The steps whose checkpoints Orbax has finalised (renamed into place, or committed on gs://),
  in order; [] when there are none."""
  directory = checkpoint_dir(workdir)
  return sorted(ocp.utils.checkpoint_steps(directory)) if directory.is_dir() else []


def write_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Records the run's config in its workdir (local or gs://); process 0 only."""
  if jax.process_index() == 0:
    directory = epath.Path(paths.resolve(workdir))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUN_CONFIG).write_text(config.to_json_best_effort(indent=2))


def read_run_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config a training run recorded in `workdir`, or None if it is not a training workdir."""
  path = epath.Path(paths.resolve(workdir)) / RUN_CONFIG
  return ml_collections.ConfigDict(json.loads(path.read_text())) if path.exists() else None


def restore_trainable(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, trainable params) of a run's checkpoint `step` (default: the latest), as numpy on
  this host whatever mesh wrote them, in the layout the run used; not the optimizer state."""
  directory = checkpoint_dir(workdir)
  steps = saved_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"No training checkpoint in {directory}")
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"No checkpoint of step {step} in {directory}; steps: "
                            f"{', '.join(map(str, steps))}")
  state_dir = str(directory / str(step) / STATE_ITEM)
  with ocp.PyTreeCheckpointer() as checkpointer:
    stored = checkpointer.metadata(state_dir).item_metadata.tree["params"]
    item = {"params": tree.map_leaves(lambda m: np.zeros((), m.dtype), stored)}
    args = {"params": tree.map_leaves(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)}
    state = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=args, partial_restore=True))
  return step, state["params"]
