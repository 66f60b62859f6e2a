"""The training workdir's format: what a run leaves in it, and reading it back.

  <workdir>/train_config.json                 the run's whole config (RUN_CONFIG)
  <workdir>/checkpoints/<step>/state/         Orbax: TrainState {step, params, opt_state}
  <workdir>/checkpoints/<step>/data_<name>/   Grain: dataset <name>'s position, a JSON per process
  <workdir>/checkpoints/damaged/<step>/       steps that did not restore, set aside
  <workdir>/checkpoints/frequent/<step>/      the frequent tier (train/checkpoint.py: Tiers), for restarts
  <workdir>/events.out.tfevents.*             TensorBoard scalars
  <workdir>/finished.json                     written last, once the final step's evaluation is (FINISHED)
  <workdir>/goodput.json                      where the run's time went (train/goodput.py)
  <workdir>/lease.json                        the live job that holds the workdir (`Lease`)

Training writes it (`train/checkpoint.py`); generation, evaluation, export and sweeps read it
through this module, so none of them imports the trainer.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from flamingo_jax import errors, paths, tree

# The run's whole config, written by training into its workdir: what a tool reading the workdir
# needs to rebuild the model (the frozen weights come from its base checkpoint or its seed).
RUN_CONFIG = "train_config.json"
CHECKPOINTS = "checkpoints"
FINISHED = "finished.json"
STATE_ITEM = "state"
FREQUENT = "frequent"  # the frequent tier's steps, beside the kept ones
DAMAGED = "damaged"  # checkpoints that did not restore, kept for a person to look at


def data_item(name: str) -> str:
  """The checkpoint item that holds dataset `name`'s iterator state."""
  return f"data_{name}"


def checkpoint_dir(workdir: str) -> epath.Path:
  return epath.Path(paths.resolve(workdir)) / CHECKPOINTS


def frequent_dir(workdir: str, configured: str = "") -> epath.Path:
  """Where the frequent checkpoint tier is: `checkpoint.frequent_dir` if set, else in the workdir.
  Every host of a job must see the same directory (Orbax commits a step from process 0)."""
  return epath.Path(paths.resolve(configured)) if configured else checkpoint_dir(workdir) / FREQUENT


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


def write_finished(workdir: str, step: int, results: dict[str, float]) -> None:
  """Records that the run is complete at `step`: its last checkpoint, validation, evaluation and
  logs are written (process 0; the last thing a run writes)."""
  if jax.process_index() == 0:
    (epath.Path(paths.resolve(workdir)) / FINISHED).write_text(
        json.dumps({"step": step, "results": results, "time": time.time()}, indent=1))


def finished_step(workdir: str) -> int:
  """The step a run completed at (its evaluation written too), 0 when it has not completed."""
  path = epath.Path(paths.resolve(workdir)) / FINISHED
  return int(json.loads(path.read_text())["step"]) if path.exists() else 0


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


LEASE = "lease.json"
LEASE_SECONDS = 60.0  # a holder that has not renewed for this long is gone


class WorkdirInUseError(errors.KnownError, RuntimeError):
  """A training workdir another live job holds."""


class Lease:
  """One live job per training workdir: `<workdir>/lease.json` names the holder (host, pid) and
  when it last renewed. Taken before a run writes anything, renewed in the background, released
  at exit. Another job's lease is taken over once it has lapsed (LEASE_SECONDS without renewal),
  or at once when its holder was a process of this host that no longer exists (a killed run).
  Local or gs:// (an object store has no exclusive create: the lease is read back after writing,
  and a job that finds another's name there gives way).

    with workdir.Lease(path):
      ...train...
  """

  def __init__(self, directory: str, seconds: float = LEASE_SECONDS):
    self.path = epath.Path(paths.resolve(directory)) / LEASE
    self.seconds = seconds
    self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread = None
    self.made_dir: bool | None = None  # whether taking the lease made the workdir

  def _holder(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except (FileNotFoundError, ValueError):
      return None

  def _alive(self, holder: dict) -> bool:
    age = time.time() - float(holder.get("renewed", 0))
    if age > self.seconds:
      return False
    if holder.get("host") == self.me["host"]:
      try:
        os.kill(int(holder["pid"]), 0)
      except ProcessLookupError:
        return False
      except PermissionError:
        return True
    return True

  def _write(self) -> None:
    if self.made_dir is None:
      self.made_dir = not self.path.parent.exists()
    self.path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**self.me, "renewed": time.time()})
    if paths.is_remote(str(self.path)):
      self.path.write_text(text)
      return
    tmp = self.path.parent / f".{LEASE}.{self.me['token']}"
    tmp.write_text(text)
    os.replace(tmp, self.path)

  def acquire(self) -> "Lease":
    holder = self._holder()
    if holder and holder.get("token") != self.me["token"] and self._alive(holder):
      age = time.time() - float(holder["renewed"])
      raise WorkdirInUseError(
          f"{self.path.parent} is in use by another job (host {holder['host']}, pid {holder['pid']}, "
          f"renewed {age:.0f} s ago); it lapses {self.seconds:.0f} s after its last renewal")
    self._write()
    if (self._holder() or {}).get("token") != self.me["token"]:
      raise WorkdirInUseError(f"{self.path.parent} was taken by another job while this one started")
    self._thread = threading.Thread(target=self._renew, daemon=True, name="workdir-lease")
    self._thread.start()
    return self

  def _renew(self) -> None:
    while not self._stop.wait(self.seconds / 4):
      try:
        self._write()
      except OSError:  # a failed renewal is retried; the lease lapses only after `seconds`
        pass

  def release(self) -> None:
    self._stop.set()
    if self._thread:
      self._thread.join()
    if (self._holder() or {}).get("token") == self.me["token"]:
      self.path.unlink()
    # A job that failed before writing anything leaves no workdir behind.
    if self.made_dir and self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
      self.path.parent.rmdir()

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
