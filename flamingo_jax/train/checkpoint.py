"""Orbax checkpoints of the train state and the data iterators' positions, written together.

Orbax writes each step to a temporary directory and renames it when complete, so a checkpoint
is whole or absent. Saves are asynchronous (training continues while the previous one is written).
The frozen weights are not saved here: they come from the base checkpoint (or the seed).

Each dataset's iterator is an item of its own, written by Grain's Orbax handler: one JSON file
per JAX process (`data_laion/process_1-of-4.json`), since every host reads its own part of the
data and so has its own position in it. The workdir's layout, and reading a run's weights without
the trainer, are `flamingo_jax/workdir.py`'s.
"""
from __future__ import annotations

from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from flamingo_jax import errors, paths, workdir as workdir_lib
from flamingo_jax.workdir import DAMAGED, data_item  # noqa: F401 (the format's names, used here)

# Orbax's words for a stored tree other than the one asked for: another layout, not damage.
STRUCTURE_MISMATCH = ("Structure mismatch", "tree structures do not match")


class Checkpointer:
  """Keep-N manager of the train state and the iterators of `data_names` under `workdir/checkpoints`
  (or `directory`)."""

  def __init__(self, workdir: str, keep: int, data_names: tuple[str, ...] = (), asynchronous: bool = True,
               create: bool = True, directory: str | None = None):
    self.directory = epath.Path(paths.resolve(directory)) if directory else workdir_lib.checkpoint_dir(workdir)
    if not create and not self.directory.is_dir():
      raise FileNotFoundError(f"No training checkpoints in {paths.resolve(workdir)}")
    self.data_names = tuple(data_names)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                             enable_async_checkpointing=asynchronous),
        item_names=(workdir_lib.STATE_ITEM,) + tuple(map(data_item, self.data_names)))

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
        raise errors.DataStateError(f"The data positions in {self.directory / str(step)} were written by a "
                         f"different number of processes than this job's {jax.process_count()}: {e}") from e
      raise
    return out["state"]

  def restore_or_set_aside(self, step: int, abstract_state: Any, iterators: dict[str, grain.DatasetIterator],
                           log) -> Any | None:
    """`restore(step, ...)`, or None when the step is damaged (a truncated or corrupted file, a
    partial directory): then it is named and moved aside to `damaged/<step>`, never deleted. A
    step of another layout or of a job of another shape is an error, not damage."""
    try:
      return self.restore(step, abstract_state, iterators)
    except Exception as e:  # pylint: disable=broad-except  (Orbax's and TensorStore's own errors)
      if errors.caused_by(e, errors.DataStateError):
        raise  # a job of another shape or version, not damage
      if any(m in str(e) for m in STRUCTURE_MISMATCH):  # the stored tree is not the one this run builds
        raise ValueError(f"checkpoint step {step} in {self.directory} holds a state of another layout than "
                         "this config builds (another model config, or another flamingo_jax version's "
                         f"layer layout); it is not damaged and was left in place: {_first_line(e)}") from e
      error = e
    aside = self._set_aside(step)
    log(f"warning: checkpoint step {step} does not restore ({_first_line(error)}); moved it to {aside} "
        "and trying the previous step")
    return None

  def _set_aside(self, step: int) -> epath.Path:
    """Moves step `step`'s directory to checkpoints/damaged/<step> (process 0) and forgets it."""
    target = self.directory / DAMAGED / str(step)
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      _move_tree(self.directory / str(step), target)
    multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    self.manager.reload()
    return target

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """Whether every host of a multi-host job has agreed to save at `step` after a preemption
    notice (JAX's preemption service); always False in a single-process job."""
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class Tiers:
  """A run's two checkpoint tiers, saved and restored as one.

    persistent  every `checkpoint.every_steps`, the last step and at a preemption; `keep` kept
                (<workdir>/checkpoints): the run's history, what the tools read
    frequent    every `checkpoint.frequent_every` steps in between (0: never); `frequent_keep`
                kept (`checkpoint.frequent_dir`, default <workdir>/checkpoints/frequent): what a
                restart resumes from when it is the newer

  Both hold the whole trainable state (params, optimizer state, step) and the data positions;
  the frozen weights are never saved. Both are asynchronous, but a save starts only once every
  earlier one is written, so one is in flight at most and a kill loses at most
  2 x frequent_every - 1 steps (killed while step k is written: resumed from k - frequent_every,
  with steps up to k + frequent_every - 1 computed). A restart resumes from the newest step of
  either tier that restores; a damaged one is set aside in its tier.
  """

  def __init__(self, workdir: str, settings: Any, data_names: tuple[str, ...]):
    self.every, self.frequent_every = settings.every_steps, settings.get("frequent_every", 0)
    self.persistent = Checkpointer(workdir, settings.keep, data_names)
    frequent_dir = workdir_lib.frequent_dir(workdir, settings.get("frequent_dir", ""))
    # A tier switched off may still hold the newest step: it is read, not written.
    self.frequent = (Checkpointer(workdir, settings.get("frequent_keep", 2), data_names, directory=frequent_dir)
                     if self.frequent_every or frequent_dir.is_dir() else None)
    self.tiers = [t for t in (self.persistent, self.frequent) if t]
    self.directory = self.persistent.directory
    self.last_saved: int | None = None  # the step of the last save begun, in either tier

  def due(self, step: int, last_step: int, preempted: bool) -> Checkpointer | None:
    """The tier that saves `step`, if any."""
    if preempted or step % self.every == 0 or step == last_step:
      return self.persistent
    if self.frequent_every and step % self.frequent_every == 0:
      return self.frequent
    return None

  def save(self, tier: Checkpointer, step: int, state: Any, iterators: dict, force: bool = False) -> int | None:
    """Starts saving `step` in `tier` once every earlier save is written; returns the step of the
    save before it (now written whole), if any."""
    for t in self.tiers:
      t.wait()
    tier.save(step, state, iterators, force=force)
    committed, self.last_saved = self.last_saved, step
    return committed

  def restore_latest(self, abstract_state: Any, iterators: dict[str, grain.DatasetIterator],
                     log=lambda line: print(line, flush=True)) -> tuple[int | None, Any, Checkpointer | None]:
    """(step, state, tier) of the newest step of either tier that restores (the persistent tier's
    on a tie), or (None, None, None) when there is none. A damaged step is set aside and the
    next newest tried; if none restores, that is an error naming the steps set aside."""
    damaged = []
    while candidates := [(step, -i, t) for i, t in enumerate(self.tiers) if (step := t.latest_step()) is not None]:
      step, _, tier = max(candidates, key=lambda c: c[:2])
      state = tier.restore_or_set_aside(step, abstract_state, iterators, log)
      if state is not None:
        return step, state, tier
      damaged.append(f"{tier.directory / DAMAGED / str(step)}")
    if damaged:
      raise FileNotFoundError(f"no checkpoint of {self.directory} restores: the damaged steps are kept in "
                              f"{', '.join(damaged)}")
    return None, None, None

  def wait(self) -> None:
    for t in self.tiers:
      t.wait()

  def reached_preemption(self, step: int) -> bool:
    return self.persistent.reached_preemption(step)

  def close(self) -> None:
    for t in self.tiers:
      t.close()


def _first_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _move_tree(source: epath.Path, target: epath.Path) -> None:
  """A directory moved: renamed where the filesystem can, else copied file by file (gs://) and
  the source removed only once every file is copied."""
  try:
    source.rename(target)
    return
  except (OSError, NotImplementedError):
    pass
  files = [f for f in source.rglob("*") if f.is_file()]
  for f in files:
    out = target / f.relative_to(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    f.copy(out)
  source.rmtree()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays, for restore."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
