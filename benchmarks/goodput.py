"""Goodput of a tiny run killed with SIGKILL several times, with and without the persistent
compilation cache and the frequent checkpoint tier: where each process's time went (start-up,
compile) and the run's account.

  python benchmarks/goodput.py          # 4 kills, 200 steps: cache on/off x frequent tier on/off

Each setting starts from an empty workdir (and, with the cache, an empty cache directory: the
first process compiles cold, every restart reads the cache). Prints one line per process (its
start-up and compile seconds, from the account's growth) and the final account of each setting.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir: str, steps: int, frequent: int) -> list[str]:
  return [sys.executable, "-m", "flamingo_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.train.num_steps={steps}", "--config.train.log_every=10", "--config.checkpoint.every_steps=50",
          f"--config.checkpoint.frequent_every={frequent}", "--config.train.validate_every=100",
          "--config.train.final_captions=0"]


def _run(command: list[str], env: dict, kill_after_step: int | None) -> None:
  """Runs the command; with `kill_after_step`, SIGKILLs it 0.3 s after it prints that step."""
  proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  killer = threading.Timer(0.3, proc.send_signal, (signal.SIGKILL,))
  for line in proc.stdout:
    if kill_after_step and line.startswith(f"step {kill_after_step}/") and not killer.is_alive():
      killer.start()
  proc.wait()
  killer.cancel()


def _account(workdir: str) -> dict:
  with open(os.path.join(workdir, "goodput.json")) as f:
    return json.load(f)


def setting(name: str, cache: bool, frequent: int, steps: int, kills: list[int]) -> dict:
  workdir, cache_dir = tempfile.mkdtemp(prefix="goodput_run_"), tempfile.mkdtemp(prefix="goodput_xla_")
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["FLAMINGO_JAX_COMPILE_CACHE"] = cache_dir if cache else "0"
  before = {"startup": 0.0, "compile": 0.0}
  try:
    for i, kill in enumerate(kills + [None]):
      _run(_command(workdir, steps, frequent), env, kill)
      seconds = _account(workdir)["seconds"]
      grown = {k: seconds[k] - before[k] for k in before}
      before = {k: seconds[k] for k in before}
      what = f"killed after step {kill}" if kill else "to the end"
      print(f"{name}: process {i + 1} ({what}): start-up {grown['startup']:.1f} s, compile {grown['compile']:.1f} s",
            flush=True)
    account = _account(workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
  shares = ", ".join(f"{k} {100 * v / account['total_s']:.1f}%" for k, v in account["seconds"].items())
  print(f"{name}: goodput {100 * account['goodput']:.1f}% over {account['restarts']} restarts, "
        f"{account['total_s']:.0f} s ({shares}); lost {account['lost_s']:.1f} s; compiles written to the "
        f"cache {account['compiles_written_to_cache']}, cache hits {account['cache_hits']}", flush=True)
  return account


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--kills", default="30,70,110,160", help="steps after which a process is killed")
  parser.add_argument("--frequent", type=int, default=10, help="the frequent tier's interval when on")
  a = parser.parse_args()
  kills = [int(k) for k in a.kills.split(",") if k]
  for cache in (True, False):
    for frequent in (0, a.frequent):
      name = f"cache {'on' if cache else 'off'}, frequent tier {f'every {frequent}' if frequent else 'off'}"
      setting(name, cache, frequent, a.steps, kills)


if __name__ == "__main__":
  main()
