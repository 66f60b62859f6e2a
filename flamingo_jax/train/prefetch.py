"""The next global batches read, checked and put on the device in a background thread while the
device runs the current step, so the training loop waits for input only when reading is slower
than the step.

  with Prefetch(lambda: next_batches(run), lambda: positions_now(run)) as batches:
    for step in ...:
      b = batches.next()        # what the producer read; blocks only while it is behind
      ...
      ckpt.save(step, state, batches.positions())   # the data position just after `b`

The batches come in the order the iterators give them: the same as reading them in the loop. The
iterators run ahead of the loop by up to `depth` batches, so a checkpoint takes the positions the
producer recorded with the batch last handed out, not the iterators' own (and anything read from
the iterators' side while the reader runs, such as skip counts, comes from those states).
The reader thread does not see the caller's `jax.set_mesh` or logical rules (both are per
thread): `fetch` places batches with explicit shardings.
"""
from __future__ import annotations

import copy
import json
import queue
import threading
from typing import Any, Callable


STOP_WAIT_S = 10.0  # longest wait at the end for a read in flight (a daemon thread after that)


class Position:
  """A data iterator's recorded position (`state`, a snapshot: the iterator moves on), for
  grain.checkpoint.CheckpointSave (which stores what `get_state()` returns)."""

  def __init__(self, state: Any):
    self.state = copy.deepcopy(state)

  def get_state(self) -> bytes:
    return json.dumps(self.state, indent=4).encode()


class Prefetch:
  """Calls `fetch()` (the next batches) then `positions()` (the iterators' states after them) in a
  thread, up to `depth` calls ahead of `next()`. An exception in the thread is raised by the
  `next()` that would have returned its batch."""

  def __init__(self, fetch: Callable[[], Any], positions: Callable[[], dict], depth: int = 2):
    self._fetch, self._positions = fetch, positions
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._consumed: dict[str, Position] | None = None
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._produce, name="flamingo_jax-prefetch", daemon=True)

  def __enter__(self) -> "Prefetch":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join(timeout=STOP_WAIT_S)  # a read in flight finishes; the thread then ends

  def _produce(self) -> None:
    while not self._stop.is_set():
      try:
        item = (self._fetch(), {name: Position(s) for name, s in self._positions().items()}), None
      except BaseException as e:  # pylint: disable=broad-except  (re-raised in the loop's thread)
        item = None, e
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.05)
          break
        except queue.Full:
          continue
      if item[1] is not None:
        return

  def next(self) -> Any:
    """The next batches, in order; re-raises the producer's exception in their place (and on
    every later call: the reader has stopped)."""
    if self._error is None:
      got, self._error = self._queue.get()
    if self._error is not None:
      raise self._error
    batches, self._consumed = got
    return batches

  def states(self) -> dict[str, Any]:
    """Each iterator's state (`get_state()`) just after the batches `next()` last returned."""
    return {name: p.state for name, p in self.positions().items()}

  def positions(self) -> dict[str, Position]:
    """Each iterator's position just after the batches `next()` last returned."""
    if self._consumed is None:
      raise RuntimeError("no batch has been taken yet")
    return self._consumed
