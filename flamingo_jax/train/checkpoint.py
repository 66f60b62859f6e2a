"""Orbax checkpoints of the train state and the data iterators' positions, written together.

Orbax writes each step to a temporary directory and renames it when complete, so a checkpoint
is whole or absent. Saves are asynchronous (training continues while the previous one is written).
The frozen weights are not saved here: they come from the base checkpoint (or the seed).
"""
from __future__ import annotations

import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
  """Keep-N manager of {state, data} items under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int, asynchronous: bool = True):
    self.directory = epath.Path(workdir).absolute() / "checkpoints" if "://" not in workdir else epath.Path(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=asynchronous),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> None:
    """Starts an asynchronous save of `state` and the iterators' state at `step`."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(_jsonable(data_state))), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """The state (placed as `abstract_state`'s shardings say) and the iterators' state."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _jsonable(tree: dict) -> dict:
  """Grain iterator states are dicts of plain values; round-trip through JSON to be sure."""
  return json.loads(json.dumps(tree, default=lambda o: o.decode() if isinstance(o, bytes) else str(o)))


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays, for restore."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
