"""Running a sweep: every point is a training run (`python -m flamingo_jax.train`, or a job through
`launch/tpu_vm.sh`) in its own workdir under the sweep's root.

A point whose run completed (its `finished.json` written after the final evaluation) is skipped on a rerun; an interrupted
one resumes from its checkpoint (training resumes exactly). SIGTERM or Ctrl-C to the sweep
passes SIGTERM to the running points (each saves and exits) and starts nothing new.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable

from etils import epath

from flamingo_jax import overrides as overrides_lib, paths, workdir
from flamingo_jax.sweep.points import Point

SWEEP_FILE = "sweep.json"  # at the root: the config and the points, in order
POINT_FILE = "sweep_point.json"  # in each point's workdir: its overrides and its whole config
STOPPED = 143  # the sweep's exit status after SIGTERM (128 + 15)


def point_dir(root: str, point: Point) -> epath.Path:
  return epath.Path(paths.resolve(root)) / point.name


def record(root: str, config_arg: str, points: list[Point]) -> None:
  """Writes the sweep's description at the root and each point's in its workdir."""
  root_dir = epath.Path(paths.resolve(root))
  root_dir.mkdir(parents=True, exist_ok=True)
  (root_dir / SWEEP_FILE).write_text(json.dumps(
      {"config": config_arg, "points": [{"name": p.name, "overrides": p.overrides} for p in points]}, indent=1))
  for p in points:
    directory = point_dir(root, p)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / POINT_FILE).write_text(json.dumps(
        {"index": p.index, "name": p.name, "overrides": p.overrides,
         "config": json.loads(p.config.to_json_best_effort())}, indent=1))


def steps_done(directory: epath.Path) -> int:
  """The latest step Orbax has finalised in a point's workdir (0: none)."""
  return max(workdir.saved_steps(str(directory)), default=0)


def finished(directory: epath.Path, num_steps: int) -> bool:
  """Whether a point's run completed all `num_steps` steps, its final validation and evaluation
  written too (a checkpoint of the last step alone is not enough: a kill may come after it)."""
  return workdir.finished_step(str(directory)) >= num_steps


def train_command(config_arg: str, root: str, point: Point, base_flags: list[str]) -> list[str]:
  """The point's training command, exactly as a scheduler would run it."""
  return [sys.executable, "-m", "flamingo_jax.train", f"--config={config_arg}",
          f"--workdir={point_dir(root, point)}", *base_flags, *overrides_lib.as_flags(point.overrides)]


def tpu_vm_command(config_arg: str, root: str, point: Point, base_flags: list[str],
                   tpu: str) -> tuple[list[str], dict[str, str]]:
  """The point as its own job on TPU VM `tpu` through launch/tpu_vm.sh (which plans it first)."""
  script = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "tpu_vm.sh")
  env = {**os.environ, "TPU": tpu, "CONFIG": config_arg, "WORKDIR": str(point_dir(root, point))}
  return ["bash", os.path.normpath(script), *base_flags, *overrides_lib.as_flags(point.overrides)], env


@dataclasses.dataclass
class Job:
  point: Point
  argv: list[str]
  env: dict[str, str] | None
  log_path: str


PR_SET_PDEATHSIG = 1  # prctl(2)


class Runner:
  """Runs jobs `parallel` at a time, with a progress line per point started and finished."""

  def __init__(self, jobs: list[Job], parallel: int = 1, log: Callable[[str], None] = print):
    self.jobs, self.parallel, self.log = jobs, max(1, parallel), log
    self.stop = False
    self.failed: list[str] = []

  def _on_signal(self, signum, frame):
    del frame
    self.log(f"sweep: {signal.Signals(signum).name}: stopping the running points (each saves a checkpoint)")
    self.stop = True

  def run(self) -> int:
    """0: every job finished; 1: one failed; STOPPED: stopped by a signal (rerun to continue)."""
    previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      return self._loop()
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)

  def _loop(self) -> int:
    pending, running, durations, start, signalled = list(self.jobs), {}, [], time.time(), set()
    while pending or running:
      while pending and len(running) < self.parallel and not self.stop:
        job = pending.pop(0)
        running[job.point.name] = (job, self._start(job), time.time())
        self.log(f"sweep: started {job.point.name} ({len(self.jobs) - len(pending)}/{len(self.jobs)}); "
                 f"log {job.log_path}{self._eta(durations, len(pending) + len(running))}")
      if self.stop:  # once per point: a second SIGTERM would cut short its clean exit
        for name, (_, proc, _) in running.items():
          if name not in signalled and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            signalled.add(name)
        pending = []
      for name, (job, proc, began) in list(running.items()):
        if proc.poll() is None:
          continue
        del running[name]
        durations.append(time.time() - began)
        self._finished(job, proc.returncode, durations[-1])
      time.sleep(0.5)
    self.log(f"sweep: {'stopped' if self.stop else 'done'} after {(time.time() - start) / 60:.1f} min")
    return STOPPED if self.stop else (1 if self.failed else 0)

  def _start(self, job: Job) -> subprocess.Popen:
    os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
    with open(job.log_path, "a") as log_file:  # the child keeps its own handle
      return subprocess.Popen(job.argv, env=job.env, stdout=log_file, stderr=subprocess.STDOUT,
                              start_new_session=True,  # Ctrl-C reaches the sweep, which passes SIGTERM on
                              preexec_fn=_terminate_with_parent)

  def _finished(self, job: Job, returncode: int, seconds: float) -> None:
    if returncode != 0:
      self.failed.append(job.point.name)
      self.log(f"sweep: FAILED {job.point.name} (exit {returncode}) after {seconds:.0f} s; see {job.log_path}")
    else:
      what = "stopped, resumes on a rerun" if self.stop else "finished"
      self.log(f"sweep: {what} {job.point.name} in {seconds:.0f} s")

  def _eta(self, durations: list[float], left: int) -> str:
    if not durations:
      return ""
    return f"; sweep ETA ~{sum(durations) / len(durations) * left / self.parallel / 60:.1f} min"


def _terminate_with_parent() -> None:
  """In a point's process before it runs: SIGTERM when the sweep dies, even by SIGKILL (Linux's
  parent-death signal), so a point saves and exits as on a preemption instead of training on as
  an orphan in its own session."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):  # not Linux: points outlive a killed sweep there
    return
  if os.getppid() == 1:  # the sweep died before the call: nobody will send it
    os.kill(os.getpid(), signal.SIGTERM)
