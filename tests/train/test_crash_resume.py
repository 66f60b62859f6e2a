"""The training CLI killed with SIGKILL at random moments (mid-step, mid-checkpoint, while
starting) resumes each time from its newest whole checkpoint and computes the uninterrupted run's
losses, bitwise; its goodput account counts the restarts, the steps computed again as lost work
(what the event files say they took) and no compile on a restart with a warm compilation cache.
The uninterrupted run also shows what a user reads: our own lines, no library start-up notices."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 18
FREQUENT = 2  # the frequent checkpoint tier's interval (the kept tier's: 6)
# What TensorFlow, absl and transformers print when they start, which a user cannot act on.
NOISE = ("oneDNN", "cpu_feature_guard", "absl::InitializeLog", "PyTorch was not found", "Traceback",
         "TF_ENABLE_ONEDNN_OPTS", "rebuild TensorFlow")


def _command(shards: str, workdir: str) -> list[str]:
  return [sys.executable, "-m", "flamingo_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.laion.shards={shards}/laion-*.tar", f"--config.data.mmc4.shards={shards}/mmc4-*.tar",
          f"--config.data.laion.validation_shards={shards}/held_out/laion-*.tar",
          f"--config.data.mmc4.validation_shards={shards}/held_out/mmc4-*.tar", "--config.data.synthetic_dir=",
          f"--config.train.num_steps={STEPS}", "--config.train.log_every=1", "--config.checkpoint.every_steps=6",
          f"--config.checkpoint.frequent_every={FREQUENT}",
          "--config.train.final_captions=0", "--config.train.validate_every=9", "--config.optim.warmup_steps=2"]


def _logged(workdir: str, tag: str) -> list[tuple[int, float]]:
  """Every (step, value) of `tag` in the run's event files: a step computed again after a kill,
  each time."""
  out = []
  for path in sorted(tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      out += [(event.step, float(tf.make_ndarray(v.tensor))) for v in event.summary.value if v.tag == tag]
  return out


def _recomputed_per_process(workdir: str) -> list[int]:
  """For each process but the last, how many of the steps it logged a later process logged again."""
  files = sorted(tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*"))
  steps = [{e.step for e in tf.compat.v1.train.summary_iterator(path) if any(v.tag == "loss" for v in e.summary.value)}
           for path in files]
  return [len(logged & set().union(*steps[k + 1:])) for k, logged in enumerate(steps[:-1])]


def _lost_by_the_event_files(workdir: str) -> list[float]:
  """What the steps computed again took the first time, from each process's event file: the
  time between a step's log and the previous step's (log_every=1; a step is logged after its
  validation and checkpoint), for every step a later process logged again. A process's first
  step has no previous log in its file: its warm-up counts as compile."""
  files = sorted(tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*"))
  times = [{e.step: e.wall_time for e in tf.compat.v1.train.summary_iterator(path)
            if any(v.tag == "loss" for v in e.summary.value)} for path in files]
  lost = []
  for k, logged in enumerate(times[:-1]):
    again = {s for later in times[k + 1:] for s in later}
    lost.append(sum(logged[s] - logged[s - 1] for s in logged if s in again and s - 1 in logged))
  return lost


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
  # Resumed from the newest step of either tier: a kill costs at most 2 x FREQUENT - 1 steps (one
  # save in flight at most: killed while step k is written, resumed from k - FREQUENT).
  recomputed = _recomputed_per_process(killed_dir)
  assert len(recomputed) == 3 and max(recomputed) <= 2 * FREQUENT - 1, recomputed
  assert any("/checkpoints/frequent\n" in out for out in outputs[1:] + [final.stdout]), "never resumed from the frequent tier"
  # The goodput account: 3 restarts, the recomputed steps' first cost as lost work, a warm restart.
  account = json.load(open(os.path.join(killed_dir, "goodput.json")))
  per_process = _lost_by_the_event_files(killed_dir)
  expected_lost = sum(per_process)
  assert account["restarts"] == 3 and [e["event"] for e in account["events"]] == ["restart"] * 3
  assert expected_lost > 0 and abs(account["lost_s"] - expected_lost) <= 0.1 * expected_lost + 0.2, (
      account["lost_by_category"], per_process, account["events"], outputs)
  assert account["lost_s"] == pytest.approx(sum(account["lost_by_category"].values()))
  assert account["total_s"] == pytest.approx(sum(account["seconds"].values()))
  assert account["this_process"]["compiles_written_to_cache"] == 0 and account["this_process"]["cache_hits"] >= 1
  assert f"goodput {100 * account['goodput']:.1f}% over 3 restarts" in final.stdout


@pytest.mark.slow
def test_a_second_job_on_a_live_workdir_is_refused_until_the_holder_is_gone(shards, tmp_path):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(_command(shards, workdir) + ["--config.train.num_steps=100000"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    for line in holder.stdout:
      if line.startswith("step 2/"):
        break
    second = subprocess.run(_command(shards, workdir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1 and second.stderr.strip().splitlines()[-1].startswith(
        f"error: {workdir} is in use by another job (host {socket.gethostname()}, pid {holder.pid}, renewed "), second.stderr
  finally:
    holder.kill()
    holder.wait()
  # The holder is gone (killed: its lease names a process that no longer exists): a job starts.
  done = subprocess.run(_command(shards, workdir) + ["--config.train.num_steps=3"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0 and "TensorBoard logs:" in done.stdout, done.stderr[-2000:]
  assert not os.path.exists(os.path.join(workdir, "lease.json"))  # released at exit
