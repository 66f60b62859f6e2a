"""Runs a config's sweep (its `get_sweep(arg)`), then summarises it; or summarises one.

  python -m flamingo_jax.sweep --config=configs/tiny.py --workdir=runs/sweep [--parallel=2]
  python -m flamingo_jax.sweep --config=configs/of_9b.py:tpu --workdir=gs://b/sweep --launch=tpu_vm \
      --tpus=v5e-a,v5e-b --config.data.mmc4.shards=...     # one TPU VM job per point
  python -m flamingo_jax.sweep --config=... --workdir=... --print     # the commands, for any scheduler
  python -m flamingo_jax.sweep --config=... --workdir=... --only=3    # one point (an array job's task)
  python -m flamingo_jax.sweep summarize --workdir=runs/sweep

`--config.…` flags apply to every point (the point's own overrides win). Every point's config is
built and checked before anything runs. A rerun skips finished points and resumes interrupted
ones. Exit status: 0 done, 1 a point failed, 2 the sweep cannot run, 143 stopped by a signal.
"""
from __future__ import annotations

import argparse
import ast
import os
import shlex
import sys

from flamingo_jax import cli, paths
from flamingo_jax.sweep import points as points_lib, runner, summary


def _parse(argv: list[str]) -> tuple[argparse.Namespace, dict, list[str]]:
  parser = argparse.ArgumentParser(prog="python -m flamingo_jax.sweep", description=__doc__.splitlines()[0])
  parser.add_argument("command", nargs="?", default="run", choices=["run", "summarize"])
  parser.add_argument("--config", help="config file with get_sweep (file.py[:arg])")
  parser.add_argument("--workdir", required=True, help="the sweep's root (local or gs://)")
  parser.add_argument("--parallel", type=int, default=1, help="points run at a time (locally)")
  parser.add_argument("--only", type=int, default=None, help="run only point K (0-based)")
  parser.add_argument("--launch", choices=["local", "tpu_vm"], default="local")
  parser.add_argument("--tpus", default="", help="--launch=tpu_vm: TPU VM names, one per point or one for all")
  parser.add_argument("--print", action="store_true", help="print every point's command and exit")
  args, rest = parser.parse_known_args(argv)
  base, flags = {}, []
  for item in rest:
    if not item.startswith("--config.") or "=" not in item:
      parser.error(f"unrecognised argument {item!r} (only --config.<field>=<value> is passed to the points)")
    key, value = item[len("--config."):].split("=", 1)
    base[key], flags = _literal(value), flags + [item]
  return args, base, flags


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _jobs(args, points, flags) -> list[runner.Job]:
  tpus = [t for t in args.tpus.split(",") if t]
  if args.launch == "tpu_vm" and len(tpus) not in (1, len(points)):
    raise points_lib.SweepError(f"--tpus: give one TPU VM name, or one per point ({len(points)}), not {len(tpus)}")
  local_root = not paths.is_remote(args.workdir)
  jobs = []
  for i, p in enumerate(points):
    log = (os.path.join(str(runner.point_dir(args.workdir, p)), "train.log") if local_root
           else os.path.join("runs", "sweep_logs", p.name + ".log"))
    if args.launch == "tpu_vm":
      argv, env = runner.tpu_vm_command(args.config, args.workdir, p, flags, tpus[i % len(tpus)])
    else:
      argv, env = runner.train_command(args.config, args.workdir, p, flags), None
    jobs.append(runner.Job(p, argv, env, log))
  return jobs


def _check(points) -> None:
  """Every point's config by the train CLI's rules, before any point starts."""
  from flamingo_jax import config_check  # pylint: disable=g-import-not-at-top
  found = [f"{p.name}: {problem}" for p in points for problem in config_check.problems(p.config)]
  if found:
    raise points_lib.SweepError(f"{len(found)} problem{'s' if len(found) > 1 else ''} in the sweep's points: "
                                + "; ".join(found))


def run(args, base: dict, flags: list[str]) -> int:
  if not args.config:
    raise points_lib.SweepError("--config is required to run a sweep")
  if args.parallel < 1:
    raise points_lib.SweepError(f"--parallel={args.parallel}: must be at least 1 (points run at a time)")
  every = points_lib.expand(args.config, base)
  if args.only is not None and not 0 <= args.only < len(every):
    raise points_lib.SweepError(f"--only={args.only}: the sweep has points 0..{len(every) - 1}")
  points = every if args.only is None else [every[args.only]]
  _check(points)
  jobs = _jobs(args, points, flags)
  if args.print:
    for job in jobs:  # a TPU VM job's own variables first
      env = " ".join(f"{k}={shlex.quote(job.env[k])}" for k in ("TPU", "CONFIG", "WORKDIR")) + " " if job.env else ""
      print(env + shlex.join(job.argv))
    return 0
  runner.record(args.workdir, args.config, every)
  todo = []
  for job in jobs:
    total = job.point.config.train.num_steps
    if runner.finished(runner.point_dir(args.workdir, job.point), total):
      print(f"sweep: {job.point.name} finished already ({total} steps): skipped", flush=True)
    else:
      todo.append(job)
  status = runner.Runner(todo, args.parallel, log=lambda line: print(line, flush=True)).run()
  if args.only is None:
    print(summary.write(args.workdir), flush=True)
  return status


def main(argv: list[str]) -> int:
  args, base, flags = _parse(argv)
  if args.command == "summarize":
    print(summary.write(args.workdir))
    return 0
  return run(args, base, flags)


if __name__ == "__main__":
  sys.exit(cli.guard(main, sys.argv[1:]))
