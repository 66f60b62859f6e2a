"""Multi-host training: two JAX processes on this machine (2 CPU devices each, joined through
jax.distributed on localhost, as GPU hosts are) run the README's training command together, each
process a slice (as a GPU node is): fsdp over each one's devices, data across them (the DCN split).

They agree on every logged loss, write one checkpoint with a data position per process, resume
it exactly, and save together at the step JAX's preemption service picks when only one of them
gets SIGTERM.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from flamingo_jax.data import pipeline, tokenizer
from flamingo_jax.models import rules
from flamingo_jax.train import checkpoint, metrics, optimizer
from flamingo_jax.train.state import TrainState
from flamingo_jax.weights import load
from tests.conftest import TEST_XLA_FLAGS
from tests.train.test_train import REPO, _cfg

PROCESSES = 2
pytestmark = pytest.mark.slow  # two processes, two cores: minutes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(shards: str, workdir: str, num_steps: int, every_steps: int) -> list[subprocess.Popen]:
  port = _free_port()
  procs = []
  for i in range(PROCESSES):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {TEST_XLA_FLAGS}",
           "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": str(PROCESSES),
           "JAX_PROCESS_ID": str(i)}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "flamingo_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
         f"--config.data.laion.shards={shards}/laion-*.tar", f"--config.data.mmc4.shards={shards}/mmc4-*.tar",
         f"--config.data.laion.validation_shards={shards}/held_out/laion-*.tar",
         f"--config.data.mmc4.validation_shards={shards}/held_out/mmc4-*.tar",
         "--config.data.synthetic_dir=", f"--config.train.num_steps={num_steps}", "--config.train.log_every=1",
         "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.dcn_data=2",
         f"--config.checkpoint.every_steps={every_steps}", "--config.checkpoint.keep=10"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return procs


def _finish(procs) -> list[str]:
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    outs.append(out)
  return outs


def _step_lines(out: str) -> list[str]:
  # Without the timing fields, which differ between hosts.
  return [line.split(" samples/s")[0].rsplit(" ", 1)[0] for line in out.splitlines()
          if line.startswith("step ") and "validation loss" not in line]


@pytest.fixture(scope="module")
def straight_run(shards, tmp_path_factory):
  """An uninterrupted two-process run of 20 steps, checkpointed every 10."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  outs = _finish(_launch(shards, workdir, num_steps=20, every_steps=10))
  return workdir, outs


def test_two_processes_train_as_one_job(straight_run):
  workdir, outs = straight_run
  for out in outs:
    assert "mesh data=2 (2 slices x 1) fsdp=2 tensor=1 over 2 slices (4 cpu devices, 2 processes)" in out
  lines = [_step_lines(out) for out in outs]
  assert len(lines[0]) == 20 and lines[0] == lines[1]  # Every host sees the same global loss.
  validation = [[line for line in out.splitlines() if "validation loss (held-out)" in line] for out in outs]
  assert len(validation[0]) == 1 and validation[0] == validation[1]  # and the same held-out loss
  step_dir = checkpoint.Checkpointer(workdir, 10).directory / "20"
  for name in ("laion", "mmc4"):  # the tiny config's mixture
    # Each host reads its own part of the data, so each has its own position in it.
    files = sorted(p.name for p in (step_dir / checkpoint.data_item(name)).glob("process_*.json"))
    assert files == [f"process_{i}-of-{PROCESSES}.json" for i in range(PROCESSES)]


def test_preempted_two_process_run_resumes_exactly(shards, straight_run, tmp_path):
  """Resume the straight run's step-10 checkpoint, SIGTERM one host only: both save at the same
  step and exit cleanly, and every loss on the way equals the uninterrupted run's."""
  straight_dir, _ = straight_run
  expected = metrics.read_scalars(straight_dir)["loss"]
  workdir = tmp_path / "resumed"
  shutil.copytree(os.path.join(straight_dir, "checkpoints", "10"), workdir / "checkpoints" / "10")
  procs = _launch(shards, str(workdir), num_steps=400, every_steps=1000)
  for line in procs[1].stdout:
    if line.startswith("step 12/"):
      procs[1].send_signal(signal.SIGTERM)
      break
  outs = _finish(procs)
  saved = [int(out.split("Preempted: checkpoint for step ")[1].split()[0]) for out in outs]
  assert saved[0] == saved[1] and 12 <= saved[0] < 400, outs[0][-2000:]
  # Each host's goodput account records the preemption at the agreed step.
  for name, process in (("goodput.json", 0), ("goodput.process_1.json", 1)):
    events = json.load(open(workdir / name))["events"]
    assert [e for e in events if e["event"] == "preemption"] == [
        {"event": "preemption", "step": saved[0], "process": process, "time": events[-1]["time"]}], events
  assert checkpoint.Checkpointer(str(workdir), 10).latest_step() == saved[0]
  resumed = metrics.read_scalars(str(workdir))["loss"]
  assert sorted(resumed) == list(range(11, saved[0] + 1))
  common = [s for s in resumed if s in expected]
  assert common == list(range(11, 21)) or common == list(range(11, saved[0] + 1))
  np.testing.assert_array_equal([resumed[s] for s in common], [expected[s] for s in common])


def test_restoring_with_another_process_count_names_the_problem(shards, straight_run):
  workdir, _ = straight_run
  cfg = _cfg(shards)
  mesh, rule_set = rules.make_mesh(cfg.mesh), rules.logical_rules(cfg)
  variables = load.initial_variables(cfg, mesh, rule_set)
  state = TrainState.create(variables["params"], optimizer.make_optimizer(cfg.optim))
  iters, _ = pipeline.make_train_iterators(cfg.data, tokenizer.load_tokenizer(cfg.tokenizer_path))
  ckpt = checkpoint.Checkpointer(workdir, 10, data_names=tuple(iters))
  assert jax.process_count() == 1
  with pytest.raises(ValueError, match="different number of processes"):
    ckpt.restore(20, checkpoint.abstract_like(state), iters)
  ckpt.close()
