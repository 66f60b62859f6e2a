"""Where a run's hours went, over all its restarts: the goodput account (`<workdir>/goodput.json`).

Every second of a training process belongs to one category: `startup` (imports, data, restore),
`compile` (the step's compile and warm-up: until the process logs its first step), `productive`
(steps), `input_wait`, `checkpoint` (the blocking
part of saving), `validation` (held-out losses, the final evaluation) or, after a restart, `lost`:
the time the steps computed again took the first time (the first process's seconds between the
checkpoint it was resumed from and the last step it recorded move from their categories to
`lost`). goodput = productive / total.

  account = Account.open(workdir, process_start)     # reads the account a killed run left
  account.switch("input_wait"); ...; account.work()    # back to steps (compile until warm)
  account.mark(step)          # at each log and checkpoint: persisted (process 0), for restarts
  account.summary()           # "goodput 91.2% over 3 restarts: compile 4.1%, lost steps 2.3%, ..."

goodput.json: {"goodput", "restarts", "lost_s", "total_s", "seconds": {category: s},
"lost_by_category" (what the lost seconds had been spent on the first time), "compiles",
"compiles_written_to_cache", "cache_hits" (over every process of the run; "this_process": the last
one's), "events": [...], "marks": [[step, {category: s}], ...]} (marks: the totals at recent
steps, kept back to the last committed checkpoint: what a restart needs to count lost work).
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import jax
from etils import epath

from flamingo_jax import paths

FILE = "goodput.json"
CATEGORIES = ("startup", "compile", "productive", "input_wait", "checkpoint", "validation", "lost")
# What steps computed again had cost the first time (a restart's start-up and compile are its own).
STEP_CATEGORIES = ("productive", "input_wait", "checkpoint", "validation")
# JAX's monitoring events: an executable built (compiled, or loaded from the persistent cache),
# a load from the cache, and a compile long enough for the cache to keep it (its write).
_BUILT = "/jax/core/compile/backend_compile_duration"
_EVENTS = {"/jax/compilation_cache/cache_hits": "cache_hits",
           "/jax/compilation_cache/cache_misses": "compiles_written_to_cache"}
_counts = {"built": 0, "cache_hits": 0, "compiles_written_to_cache": 0}


def _on_duration(event: str, *args, **kwargs) -> None:
  del args, kwargs
  if event == _BUILT:
    _counts["built"] += 1


def _on_event(event: str, **kwargs) -> None:
  del kwargs
  if event in _EVENTS:
    _counts[_EVENTS[event]] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


def compile_counts() -> dict[str, int]:
  """In this process so far: `compiles` (every XLA compile), `compiles_written_to_cache` (those
  long enough for the persistent cache to keep: what a warm restart does not compile again) and
  `cache_hits` (executables loaded from the cache instead)."""
  return {"compiles": _counts["built"] - _counts["cache_hits"], "cache_hits": _counts["cache_hits"],
          "compiles_written_to_cache": _counts["compiles_written_to_cache"]}


class Account:
  """The run's account: the totals it was opened with plus this process's stopwatch."""

  def __init__(self, path: str, prior: dict, started: float, resumed_at: int | None):
    self.path = path
    self.base = {c: float(prior.get("seconds", {}).get(c, 0.0)) for c in CATEGORIES}
    self.restarts = int(prior.get("restarts", -1)) + 1
    self.events = list(prior.get("events", []))
    self.counts_before = {k: int(prior.get(k, 0)) for k in compile_counts()}
    self.counts_at_open = compile_counts()
    self.marks = [(int(s), dict(t)) for s, t in prior.get("marks", [])]
    self.lost_by = {c: float(prior.get("lost_by_category", {}).get(c, 0.0)) for c in STEP_CATEGORIES}
    self.own = dict.fromkeys(CATEGORIES, 0.0)
    self.category, self.since = "startup", started
    self.first_step: int | None = None  # this process's first mark; a later one ends the warm-up
    if self.restarts:
      self._count_lost(resumed_at or 0)

  @classmethod
  def open(cls, workdir: str, started: float, resumed_at: int | None) -> "Account":
    """The account of `workdir` (a new one if it has none), this process started at `started`
    (time.time()) and resuming from checkpoint step `resumed_at` (None: from the start, which
    after a restart means every step before is computed again). Process 0 keeps goodput.json,
    every other host its own goodput.process_<i>.json."""
    name = FILE if jax.process_index() == 0 else f"goodput.process_{jax.process_index()}.json"
    path = paths.join(paths.resolve(workdir), name)  # each host its own account (process 0's: FILE)
    prior = json.loads(epath.Path(path).read_text()) if epath.Path(path).exists() else {}
    return cls(path, prior, started, resumed_at)

  def _count_lost(self, resumed_at: int) -> None:
    """Moves what the steps after `resumed_at` cost the previous processes (`STEP_CATEGORIES`,
    from the last time the run stood at that step to its last mark) to `lost`.

    Worked example: marks [(30, {productive: 100}), (31, ...), (40, {productive: 130})], resumed
    at 30: the 30 s of steps 31-40 move from productive to lost."""
    event = {"event": "restart", "resumed_at": resumed_at, "time": time.time(), "lost_s": 0.0}
    self.events.append(event)
    standing = [i for i, (s, _) in enumerate(self.marks) if s <= resumed_at]
    if not standing:
      return
    first, last = self.marks[standing[-1]][1], self.marks[-1][1]
    event["lost_steps"] = [self.marks[standing[-1]][0], self.marks[-1][0]]
    for c in STEP_CATEGORIES:
      moved = max(0.0, last.get(c, 0.0) - first.get(c, 0.0))
      self.base[c] -= moved
      self.base["lost"] += moved
      self.lost_by[c] += moved
      event["lost_s"] += moved
    self.marks = self.marks[:standing[-1] + 1]

  def switch(self, category: str) -> None:
    """From now on, seconds count as `category`."""
    now = time.time()
    self.own[self.category] += now - self.since
    self.category, self.since = category, now

  def work(self) -> None:
    """From now on, seconds count as step work: `compile` until this process has logged a step
    (compile, first execution, first writes), then `productive`."""
    warm = self.first_step is not None and self.marks and self.marks[-1][0] > self.first_step
    self.switch("productive" if warm else "compile")

  def totals(self) -> dict[str, float]:
    self.switch(self.category)
    return {c: self.base[c] + self.own[c] for c in CATEGORIES}

  def record(self, event: str, **fields) -> None:
    """An event of the run (a preemption notice, ...), kept in the account."""
    self.events.append({"event": event, **fields, "time": time.time()})

  def mark(self, step: int, checkpoint_before: int | None = None) -> None:
    """The totals after `step`, kept for a restart; marks before `checkpoint_before` (a step that
    is committed) are dropped. Writes the account."""
    self.marks.append((step, self.totals()))
    if self.first_step is None:
      self.first_step = step
    elif self.category == "compile":  # warm: the seconds after this mark are the steps'
      self.work()
    if checkpoint_before is not None:
      self.marks = [(s, t) for s, t in self.marks if s >= checkpoint_before]
    self.write()

  def as_json(self) -> dict:
    totals, counts = self.totals(), compile_counts()
    total = sum(totals.values())
    return {"goodput": totals["productive"] / total if total else 0.0, "restarts": self.restarts,
            "lost_s": totals["lost"], "total_s": total, "seconds": totals, "lost_by_category": self.lost_by,
            **{k: self.counts_before[k] + counts[k] - self.counts_at_open[k] for k in counts},
            "this_process": {k: counts[k] - self.counts_at_open[k] for k in counts},
            "events": self.events, "marks": self.marks}

  def write(self) -> None:
    """The account file, whole (a temporary file renamed into place; an object write on gs://)."""
    text = json.dumps(self.as_json(), indent=1)
    if paths.is_remote(self.path):
      epath.Path(self.path).write_text(text)
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=f".{FILE}.")
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, self.path)

  def scalars(self) -> dict[str, float]:
    """For TensorBoard: goodput/fraction and goodput/<category>_s."""
    account = self.as_json()
    return {"goodput/fraction": account["goodput"], "goodput/restarts": float(account["restarts"]),
            **{f"goodput/{c}_s": s for c, s in account["seconds"].items()}}

  def summary(self) -> str:
    """One line: goodput, restarts, and each other category's share of the total."""
    account = self.as_json()
    total = account["total_s"] or 1.0
    names = {"lost": "lost steps", "input_wait": "input wait"}
    parts = [f"{names.get(c, c)} {100 * s / total:.1f}%" for c, s in account["seconds"].items()
             if c != "productive" and s > 0]
    restarts = account["restarts"]
    return (f"goodput {100 * account['goodput']:.1f}% over {restarts} restart{'s' * (restarts != 1)} "
            f"({total:.0f} s): " + ", ".join(parts))
