"""Orbax checkpoints of the train state and the data iterators' positions, written together.

Orbax writes each step to a temporary directory and renames it when complete, so a checkpoint
is whole or absent. Saves are asynchronous (training continues while the previous one is written).
The frozen weights are not saved here: they come from the base checkpoint (or the seed).

Each dataset's iterator is an item of its own, written by Grain's Orbax handler: one JSON file
per JAX process (`data_laion/process_1-of-4.json`), since every host reads its own part of the
data and so has its own position in it.
"""
from __future__ import annotations

from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from flamingo_jax import paths


def data_item(name: str) -> str:
  """The checkpoint item that holds dataset `name`'s iterator state."""
  return f"data_{name}"


class Checkpointer:
  """Keep-N manager of the train state and the iterators of `data_names` under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int, data_names: tuple[str, ...] = (), asynchronous: bool = True):
    self.directory = epath.Path(paths.resolve(workdir)) / "checkpoints"
    self.data_names = tuple(data_names)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=asynchronous),
        item_names=("state",) + tuple(map(data_item, self.data_names)))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, iterators: dict[str, grain.DatasetIterator], force: bool = False) -> None:
    """Starts an asynchronous save of `state`; the iterators' positions are taken now."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        **{data_item(n): grain.checkpoint.CheckpointSave(iterators[n]) for n in self.data_names}),
        force=force)

  def restore(self, step: int, abstract_state: Any,
              iterators: dict[str, grain.DatasetIterator] | None = None) -> Any:
    """The state (placed as `abstract_state`'s shardings say); `iterators` are moved to where
    this process's iterators were at `step`."""
    iterators = iterators or {}
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          **{data_item(n): grain.checkpoint.CheckpointRestore(it) for n, it in iterators.items()}))
    except ValueError as e:
      if "process_" in str(e):  # Grain names the per-process file it did not find.
        raise ValueError(f"The data positions in {self.directory / str(step)} were written by a "
                         f"different number of processes than this job's {jax.process_count()}: {e}") from e
      raise
    return out["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """Whether every host of a multi-host job has agreed to save at `step` after a preemption
    notice (JAX's preemption service); always False in a single-process job."""
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays, for restore."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
