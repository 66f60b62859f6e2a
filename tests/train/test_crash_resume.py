"""The training CLI killed with SIGKILL at random moments (mid-step, mid-checkpoint, while
starting) resumes each time from its newest whole checkpoint and computes the uninterrupted run's
losses, bitwise. The uninterrupted run also shows what a user reads: our own lines, no library
start-up notices."""
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 18
# What TensorFlow, absl and transformers print when they start, which a user cannot act on.
NOISE = ("oneDNN", "cpu_feature_guard", "absl::InitializeLog", "PyTorch was not found", "Traceback",
         "TF_ENABLE_ONEDNN_OPTS", "rebuild TensorFlow")


def _command(shards: str, workdir: str) -> list[str]:
  return [sys.executable, "-m", "flamingo_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.laion.shards={shards}/laion-*.tar", f"--config.data.mmc4.shards={shards}/mmc4-*.tar",
          f"--config.data.laion.validation_shards={shards}/held_out/laion-*.tar",
          f"--config.data.mmc4.validation_shards={shards}/held_out/mmc4-*.tar", "--config.data.synthetic_dir=",
          f"--config.train.num_steps={STEPS}", "--config.train.log_every=1", "--config.checkpoint.every_steps=3",
          "--config.train.final_captions=0", "--config.train.validate_every=9", "--config.optim.warmup_steps=2"]


def _logged(workdir: str, tag: str) -> list[tuple[int, float]]:
  """Every (step, value) of `tag` in the run's event files: a step computed again after a kill,
  each time."""
  out = []
  for path in sorted(tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      out += [(event.step, float(tf.make_ndarray(v.tensor))) for v in event.summary.value if v.tag == tag]
  return out


def _kill_at_step(command: list[str], step: int, delay: float) -> str:
  """Starts a run, SIGKILLs it `delay` seconds after it prints step `step` (or when it ends);
  returns what it printed."""
  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines, killer = [], threading.Timer(delay, proc.send_signal, (signal.SIGKILL,))
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(f"step {step}/") and not killer.is_alive():
      killer.start()
  proc.wait(timeout=300)
  killer.cancel()
  return "".join(lines)


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_with_the_same_losses(shards, tmp_path):
  straight_dir, killed_dir = str(tmp_path / "straight"), str(tmp_path / "killed")
  done = subprocess.run(_command(shards, straight_dir), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  noisy = [line for line in (done.stdout + done.stderr).splitlines() if any(n in line for n in NOISE)]
  assert not noisy, noisy
  assert done.stdout.startswith("mesh data=8 fsdp=1 tensor=1 (8 cpu devices, 1 process)\nvalidation: 4 batches of") and f"step {STEPS}/{STEPS}  loss" in done.stdout, done.stdout[:2000]
  expected, validated = dict(_logged(straight_dir, "loss")), dict(_logged(straight_dir, "val/loss"))
  assert sorted(expected) == list(range(1, STEPS + 1)) and sorted(validated) == [9, 18]
  rng = np.random.default_rng(0)
  # One kill in each third of the run (each restart resumes before its kill step, so it gets there),
  # at a random moment of the step after the one it prints: in the step, a checkpoint or a log.
  kill_steps = [int(rng.integers(lo, lo + 5)) for lo in (2, 7, 12)]
  outputs = [_kill_at_step(_command(shards, killed_dir), step, float(rng.uniform(0, 0.5))) for step in kill_steps]
  final = subprocess.run(_command(shards, killed_dir), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stderr[-3000:]
  assert all("Resumed from step" in out or "step 1/" in out for out in outputs)
  logged = _logged(killed_dir, "loss")
  assert {s for s, _ in logged} == set(expected) and len(logged) > STEPS  # steps computed again after kills
  assert [loss for _, loss in logged] == [expected[s] for s, _ in logged]
  assert [v for s, v in _logged(killed_dir, "val/loss")] == [validated[s] for s, _ in _logged(killed_dir, "val/loss")]
  resumed = [int(out.split("Resumed from step ")[1].split()[0]) for out in outputs[1:] + [final.stdout]
             if "Resumed from step" in out]
  # The second and third starts and the final one each resume (a kill after step 7 leaves a
  # checkpoint), never from behind an earlier resume; a kill during a checkpoint's write may leave
  # two starts at the same step, so equal steps are allowed.
  assert len(resumed) >= 2 and resumed == sorted(resumed), resumed
