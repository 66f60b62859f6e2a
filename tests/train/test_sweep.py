"""Sweeps: points from a config's get_sweep, named and checked before anything runs; a 2-point
tiny sweep run end to end by the CLI, stopped by SIGTERM in its second point (whose training
saves a checkpoint that restores, data position included) and rerun (the first point is not run
again, the second resumes and finishes), then summarised; a sweep killed with SIGKILL leaves nothing
running and its rerun equals a straight run."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from flamingo_jax import overrides, workdir as workdir_lib
from flamingo_jax.sweep import points, product, zipped
from flamingo_jax.train import metrics
from tests.conftest import TEST_XLA_FLAGS, library_lines
from tests.train.test_train import REPO

SWEEP_CONFIG = """
from configs import tiny
from flamingo_jax import sweep


def get_config(arg=None):
  c = tiny.get_config(arg).unlock()
  c.data.synthetic_dir = ""
  c.data.laion.update(shards="{shards}/laion-*.tar", validation_shards="{shards}/held_out/laion-*.tar")
  c.data.mmc4.update(shards="{shards}/mmc4-*.tar", validation_shards="{shards}/held_out/mmc4-*.tar")
  c.train.update(num_steps=6, log_every=1, final_captions=0, validate_every=3, validation_batches=2)
  c.checkpoint.every_steps = 2
  return c.lock()


def get_sweep(arg=None):
  return {points}
"""
# The second point is long enough to be stopped in the middle. A seed is not part of the
# compiled step, so the second point's processes reuse the first's compiles (the test's cache).
TWO_POINTS = 'sweep.zipped({"seed": [42, 7], "train.num_steps": [6, 30]})'


def _config(tmp_path, shards, points=TWO_POINTS):
  path = tmp_path / "sweep_config.py"
  path.write_text(SWEEP_CONFIG.format(shards=shards, points=points))
  return str(path)


def _sweep(*args, **kw):
  return subprocess.Popen([sys.executable, "-m", "flamingo_jax.sweep", *args], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": TEST_XLA_FLAGS}, **kw)


def _check_restorable(workdir, step, shards, seed):
  """A SIGTERM'd point's checkpoint restores, and its data iterators continue after the `step`
  batches the run consumed."""
  from flamingo_jax.data import pipeline, tokenizer
  from flamingo_jax.models import rules
  from flamingo_jax.train import checkpoint, optimizer
  from flamingo_jax.train.state import TrainState
  from flamingo_jax.weights import load
  from tests.train.test_train import _cfg
  import numpy as np
  cfg = _cfg(shards)
  cfg.seed = seed
  variables = load.initial_variables(cfg, rules.make_mesh(cfg.mesh), rules.logical_rules(cfg))
  state = TrainState.create(variables["params"], optimizer.make_optimizer(cfg.optim))
  iters, _ = pipeline.make_train_iterators(cfg.data, tokenizer.load_tokenizer(cfg.tokenizer_path))
  ckpt = checkpoint.Checkpointer(workdir, 3, data_names=tuple(iters))
  assert ckpt.latest_step() == step
  assert int(ckpt.restore(step, checkpoint.abstract_like(state), iters).step) == step
  fresh, _ = pipeline.make_train_iterators(cfg.data, tokenizer.load_tokenizer(cfg.tokenizer_path))
  for name in iters:
    for _ in range(step):
      next(fresh[name])
    np.testing.assert_array_equal(next(iters[name])["input_ids"], next(fresh[name])["input_ids"])
  ckpt.close()


def test_points_products_zips_names_and_checks():
  assert product({"a.x": [1, 2], "b.y": [3]}) == [{"a.x": 1, "b.y": 3}, {"a.x": 2, "b.y": 3}]
  assert zipped({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  with pytest.raises(points.SweepError, match="differ in length"):
    zipped({"a": [1, 2], "b": [3]})
  # Only the keys that vary name a point; two keys ending alike keep their full paths.
  assert points.point_names([{"optim.learning_rate": 1e-3, "seed": 0}, {"optim.learning_rate": 3e-4, "seed": 0}]) == [
      "learning_rate=0.001", "learning_rate=0.0003"]
  assert points.point_names([{"a.n": 1, "b.n": 1}, {"a.n": 2, "b.n": 3}]) == ["a.n=1,b.n=1", "a.n=2,b.n=3"]
  assert overrides.as_flags({"optim.learning_rate": 3e-4, "model.scan_layers": True}) == [
      "--config.optim.learning_rate=0.0003", "--config.model.scan_layers=True"]
  tiny = points.expand("configs/tiny.py", {"train.num_steps": 8})
  assert [p.name for p in tiny] == ["learning_rate=0.001,every_n_layers=1", "learning_rate=0.001,every_n_layers=2",
                                    "learning_rate=0.003,every_n_layers=1", "learning_rate=0.003,every_n_layers=2"]
  assert tiny[3].config.model.xattn.every_n_layers == 2 and tiny[3].config.train.num_steps == 8


def test_a_bad_point_fails_the_sweep_before_anything_runs(tmp_path, shards):
  config = _config(tmp_path, shards, 'sweep.product({"optim.learning_rate": [1e-3], "optim.warmup_steps": [2, "two"]})')
  out = _sweep(f"--config={config}", f"--workdir={tmp_path / 'sweep'}")
  text, _ = out.communicate(timeout=120)
  assert out.returncode == 2, text
  assert text.strip().splitlines()[-1].startswith(
      "error: sweep point 1 (warmup_steps=two): optim.warmup_steps='two':"), text
  assert not (tmp_path / "sweep").exists()
  typo = _sweep(f"--config={config}", f"--workdir={tmp_path / 'sweep'}", "--config.optim.learning_rat=1")
  text, _ = typo.communicate(timeout=120)
  assert typo.returncode == 2 and text.strip().splitlines()[-1] == "error: --config.optim.learning_rat: no such config field"
  config = _config(tmp_path, shards)  # a good one: --print writes each point's exact command
  printed = _sweep(f"--config={config}", "--workdir=gs://bucket/sweep", "--launch=tpu_vm", "--tpus=v5e-a", "--print")
  text, _ = printed.communicate(timeout=120)
  assert printed.returncode == 0 and text.splitlines()[1].startswith(
      f"TPU=v5e-a CONFIG={config} WORKDIR=gs://bucket/sweep/seed=7,num_steps=30 bash ")
  assert text.splitlines()[1].endswith("launch/tpu_vm.sh --config.seed=7 --config.train.num_steps=30")


@pytest.mark.slow
def test_sweep_runs_is_stopped_resumes_and_summarises(tmp_path, shards):
  config, root = _config(tmp_path, shards), tmp_path / "sweep"
  first, second = "seed=42,num_steps=6", "seed=7,num_steps=30"
  proc = _sweep(f"--config={config}", f"--workdir={root}")
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if line.startswith(f"sweep: started {second}"):
      break
  log = root / second / "train.log"
  deadline = time.time() + 120
  while time.time() < deadline and "step 3/30" not in (log.read_text() if log.exists() else ""):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  text, _ = proc.communicate(timeout=120)
  text = "".join(seen) + text
  assert proc.returncode == 143, text
  assert f"sweep: finished {first}" in text and f"sweep: stopped, resumes on a rerun {second}" in text, text
  stopped_at = int(log.read_text().split("Preempted: checkpoint for step ")[1].split()[0])
  _check_restorable(str(root / second), stopped_at, shards, seed=7)
  rerun = _sweep(f"--config={config}", f"--workdir={root}")
  text, _ = rerun.communicate(timeout=300)
  assert rerun.returncode == 0, text
  assert f"sweep: {first} finished already (6 steps): skipped" in text
  assert "Resumed from step" in log.read_text() and f"sweep: finished {second}" in text
  recorded = json.loads((root / second / "sweep_point.json").read_text())
  assert recorded["overrides"] == {"seed": 7, "train.num_steps": 30}
  assert recorded["config"]["seed"] == 7
  with open(root / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["point"] for r in rows] == [first, second] and {r["status"] for r in rows} == {"done"}
  assert [r["steps"] for r in rows] == ["6/6", "30/30"]
  assert all(float(r["held-out loss"]) > 0 and float(r["loss_mmc4 final"]) > 0
             and float(r["validation loss best"]) <= float(r["validation loss final"]) for r in rows)
  table = (root / "summary.md").read_text()
  assert table.startswith("| point | seed | train.num_steps | status |") and table in text
  assert (root / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not library_lines(text), library_lines(text)  # the sweep's own lines only


@pytest.mark.slow
def test_a_killed_sweep_leaves_no_point_running_and_its_rerun_equals_a_straight_one(tmp_path, shards):
  """SIGKILL to the sweep (no handler of its runs): the kernel sends its running point SIGTERM,
  which saves a checkpoint and exits, instead of training on as an orphan in its own session; the
  rerun resumes it and logs the losses of the same point run straight, bitwise. A point counts as
  finished only once its final evaluation is written, not at its last checkpoint."""
  config = _config(tmp_path, shards, 'sweep.zipped({"train.num_steps": [20]})')
  root, straight = tmp_path / "sweep", tmp_path / "straight"
  proc = _sweep(f"--config={config}", f"--workdir={root}")
  log = root / "base" / "train.log"  # (one point: nothing varies in its name)
  deadline = time.time() + 120
  while time.time() < deadline and "step 3/20" not in (log.read_text() if log.exists() else ""):
    time.sleep(0.5)
  proc.kill()
  proc.communicate(timeout=30)
  deadline = time.time() + 90
  while time.time() < deadline and "Preempted: checkpoint for step" not in log.read_text():
    time.sleep(0.5)
  assert "Preempted: checkpoint for step" in log.read_text(), log.read_text()[-2000:]
  time.sleep(3)  # its exit after the save
  alive = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout.split()
  assert not alive, f"processes still running in {root}: {alive}"
  for workdir in (root, straight):
    done = _sweep(f"--config={config}", f"--workdir={workdir}")
    text, _ = done.communicate(timeout=300)
    assert done.returncode == 0 and "sweep: finished base" in text, text
  assert "Resumed from step" in log.read_text()
  resumed, expected = metrics.read_scalars(str(root / "base")), metrics.read_scalars(str(straight / "base"))
  assert sorted(expected["loss"]) == list(range(1, 21)) and resumed["loss"] == expected["loss"]
  assert resumed["val/loss"] == expected["val/loss"] and "eval/loss_real_images" in resumed
  # Killed after its last checkpoint, before its final evaluation (its record of that removed):
  # not finished, so the rerun runs it; it resumes at step 20, evaluates, and is finished.
  (straight / "base" / workdir_lib.FINISHED).unlink()
  again = _sweep(f"--config={config}", f"--workdir={straight}")
  text, _ = again.communicate(timeout=300)
  assert again.returncode == 0 and "finished already" not in text and "sweep: finished base" in text, text
  last_run = (straight / "base" / "train.log").read_text().split("mesh data=")[-1]
  assert "Resumed from step 20" in last_run and "held-out caption loss" in last_run and "step 20/20  loss" not in last_run
  assert workdir_lib.finished_step(str(straight / "base")) == 20
