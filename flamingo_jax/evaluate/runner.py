"""Stages of an evaluation run: run each task, write the report (the model comes from
`weights.load.load_model`, wrapped by `EvalModel.from_loaded`)."""
from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import jax
import ml_collections

from flamingo_jax import errors
from flamingo_jax.evaluate import catalog, protocol, report, tasks
from flamingo_jax.evaluate.inference import EvalModel


def guess_model_name(config: ml_collections.ConfigDict, config_path: str | None = None) -> str | None:
  """The published-results key (of_3b, of_4b_instruct, ...) of a config, when recognisable."""
  if config_path:
    stem = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    if stem in report.load_published()["models"]:
      return stem
  lm, path = config.model.lm, str(config.get("lm_path", "")).lower()
  instruct = "dolly" in path or "instruct" in path
  name = {("mpt", 2048): "of_3b", ("gpt_neox", 2560): "of_4b", ("mpt", 4096): "of_9b"}.get(
      (lm.family, lm.hidden_size))
  return f"{name}_instruct" if name and instruct and name != "of_9b" else name


def parse_ints(text: str | Sequence[int]) -> list[int]:
  if isinstance(text, str):
    return [int(x) for x in text.replace(" ", "").split(",") if x]
  return [int(x) for x in text]


def check_request(task_names: Sequence[str], shots: Sequence[int]) -> None:
  """Task names and shot counts a run can use, before any work (usage errors)."""
  unknown = [n for n in task_names if n not in catalog.TASKS]
  if unknown:
    raise errors.UsageError(f"--task={unknown[0]}: unknown task; known: {', '.join(catalog.TASKS)}")
  if not shots or min(shots) < 0:
    raise errors.UsageError(f"--shots={','.join(map(str, shots))}: shot counts must be whole numbers >= 0")


def run(model: EvalModel, eval_cfg: ml_collections.ConfigDict, task_names: Sequence[str],
        shots: Sequence[int], out_dir: str, model_name: str | None = None,
        progress: bool = True) -> tuple[dict[str, list[dict]], dict[str, str]]:
  """Evaluates every task; host 0 writes results.{json,md,png} (and per-trial predictions)."""
  check_request(task_names, shots)
  eval_cfg = protocol.resolve(eval_cfg)
  seeds = parse_ints(eval_cfg.trial_seeds)
  results, timings = {}, {}
  loaded = {name: catalog.get_task(name).read(eval_cfg.data[name]) for name in task_names}
  for name, data in loaded.items():  # every task's demonstration pool, before any is evaluated
    pool = min(len(data.train), eval_cfg.query_set_size)
    if max(shots) > pool:
      raise ValueError(f"--shots={max(shots)}: {name} has {pool} demonstrations to draw from "
                       f"(eval_config.query_set_size={eval_cfg.query_set_size}, {len(data.train)} train examples)")
  for name, data in loaded.items():
    start = time.time()
    results[name] = tasks.evaluate_task(model, catalog.get_task(name), data, list(shots), seeds, eval_cfg,
                                        out_dir, progress)
    timings[name] = round(time.time() - start, 1)
    logging.info("%s: %s", name, results[name])
  meta = {"model": model_name, "demos": eval_cfg.demos, "protocol": protocol.describe(eval_cfg), "trial_seeds": seeds, "seconds": timings,
          "num_samples": eval_cfg.num_samples, "batch_size": eval_cfg.batch_size,
          "devices": jax.device_count(), "hosts": jax.process_count(),
          "eval_config": eval_cfg.to_dict()}
  paths = {}
  if jax.process_index() == 0:
    paths = report.write_report(out_dir, results, meta, model_name, eval_cfg.demos)
  return results, paths
