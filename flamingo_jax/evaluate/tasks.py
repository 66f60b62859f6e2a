"""The evaluation loops: generation (captioning, VQA) and class likelihoods (classification).

One trial = one (task, shot count, seed): choose the test subset and demonstrations, run the model
over it batch by batch, post-process, score with the task's metric. `evaluate_task` runs every
shot count and seed and aggregates trials as the reference does (NaN-aware mean and standard
deviation). What a task is comes from its record (catalog.py); how to evaluate, from the eval
config (configs/eval_common.py) as given.
"""
from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np

from flamingo_jax import paths
from flamingo_jax.evaluate import clip_features, demonstrations, prompts
from flamingo_jax.evaluate.catalog import Task
from flamingo_jax.evaluate.examples import TaskData
from flamingo_jax.evaluate.inference import EvalModel
from flamingo_jax.evaluate.scoring import Trial


def _progress(total: int, desc: str, enabled: bool):
  if not enabled or jax.process_index() != 0:
    return None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=desc, unit="ex", dynamic_ncols=True)


def make_plan(model: EvalModel, task: Task, data: TaskData, shots: int, seed: int,
              cfg: ml_collections.ConfigDict, progress: bool = True) -> demonstrations.Plan:
  """The trial's test subset and each query's demonstrations (`cfg.demos`: random or RICES)."""
  k = prompts.effective_shots(shots)
  reference = (demonstrations.ReferenceOrder(cfg.batch_size, cfg.prompt_ensembling and not task.generates)
               if cfg.reference_demo_order else None)
  if cfg.demos == "random":
    return demonstrations.random_plan(len(data.test), len(data.train), cfg.num_samples, k, seed,
                                      cfg.query_set_size, reference)
  if cfg.demos != "rices":
    raise ValueError(f"Unknown demonstration selection {cfg.demos!r} (random | rices)")
  batch = max(64, cfg.batch_size)
  bar = _progress(len(data.train), f"RICES features {task.name} (train)", progress)
  train = clip_features.load_or_compute(
      cfg.rices_cache_dir, task.rices_name or task.name, len(data.train),
      lambda: model.embed_images([e.image_path for e in data.train], batch, bar.update if bar else None),
      write=jax.process_index() == 0)
  if bar:
    bar.close()
  embed = lambda idx: model.embed_images([data.test[i].image_path for i in idx], batch)
  return demonstrations.rices_plan(len(data.test), cfg.num_samples, k, seed, train, embed, reference=reference)


def _batches(plan: demonstrations.Plan, batch_size: int):
  for start in range(0, len(plan.test), batch_size):
    yield start, plan.test[start:start + batch_size], plan.demos[start:start + batch_size]


def _prompts(task: Task, data: TaskData, shots, test_idx, demo_orders, cfg):
  texts, images = [], []
  for i, demos in zip(test_idx, demo_orders):
    query, demo_examples = data.test[int(i)], [data.train[j] for j in demos]
    texts.append(prompts.build_prompt(task, demo_examples, query, shots, data.class_names))
    images.append(prompts.prompt_images(task, demo_examples, query, shots,
                                        cfg.reference_zero_shot_classification_images))
  return texts, images


def run_generation(model: EvalModel, task: Task, data: TaskData, shots: int, seed: int,
                   cfg: ml_collections.ConfigDict, progress: bool = True) -> list[tuple[Any, str]]:
  """(example, post-processed generation) for every evaluated test example."""
  task.postprocess("probe")  # fails now, not after an hour of generation, if e.g. NLTK data is missing
  plan = make_plan(model, task, data, shots, seed, cfg, progress)
  out = []
  bar = _progress(len(plan.test), f"{task.name} {shots}-shot seed {seed}", progress)
  for _, test_idx, demos in _batches(plan, cfg.batch_size):
    texts, images = _prompts(task, data, shots, test_idx, demos, cfg)
    for i, text in zip(test_idx, model.generate(texts, images, task.decoding)):
      out.append((data.test[int(i)], task.postprocess(text)))
    if bar:
      bar.update(len(test_idx))
  if bar:
    bar.close()
  return out


def run_classification(model: EvalModel, task: Task, data: TaskData, shots: int, seed: int,
                       cfg: ml_collections.ConfigDict, progress: bool = True) -> tuple[list, np.ndarray]:
  """(examples, (N, C) class scores averaged over prompt permutations)."""
  plan = make_plan(model, task, data, shots, seed, cfg, progress)
  k = prompts.effective_shots(shots)
  class_tokens = model.class_token_ids(data.class_names)
  examples, scores = [], []
  bar = _progress(len(plan.test), f"{task.name} {shots}-shot seed {seed}", progress)
  for start, test_idx, demos in _batches(plan, cfg.batch_size):
    passes = demonstrations.ensemble_orders(demos, k, cfg.prompt_ensembling, seed, offset=start, plan=plan)
    total = 0.0
    for orders in passes:
      texts, images = _prompts(task, data, shots, test_idx, orders, cfg)
      total = total + model.class_scores(texts, images, class_tokens, cfg.classification_kv_cache,
                                         cfg.reference_cached_scores)
    scores.append(total / len(passes))
    examples.extend(data.test[int(i)] for i in test_idx)
    if bar:
      bar.update(len(test_idx))
  if bar:
    bar.close()
  return examples, np.concatenate(scores)


def run_trial(model: EvalModel, task: Task, data: TaskData, shots: int, seed: int,
              cfg: ml_collections.ConfigDict, progress: bool = True) -> Trial:
  """One trial: its score (None when the test split has no annotations) and its predictions."""
  run = run_generation if task.generates else run_classification
  outputs = run(model, task, data, shots, seed, cfg, progress)
  return task.score(outputs, cfg, cfg.data[task.name], data.class_names)


def _write_predictions(out_dir: str, task: Task, shots: int, seed: int, demos: str, trial: Trial) -> None:
  if not out_dir or jax.process_index() != 0:
    return
  paths.write(paths.join(out_dir, f"{task.name}_{shots}shot_{demos}_seed{seed}_predictions.json"),
              json.dumps(trial.predictions, indent=1, default=str))


def evaluate_task(model: EvalModel, task: Task, data: TaskData, shots_list, seeds,
                  cfg: ml_collections.ConfigDict, out_dir: str = "", progress: bool = True) -> list[dict]:
  """[{"shots", "trials", "mean", "stddev"}] for each shot count, trials over `seeds`; each
  trial's predictions written to `out_dir` when given."""
  results = []
  for shots in shots_list:
    scores = []
    for seed in seeds:
      trial = run_trial(model, task, data, shots, seed, cfg, progress)
      _write_predictions(out_dir, task, shots, seed, cfg.demos, trial)
      scores.append(trial.score)
      if progress and jax.process_index() == 0:
        score = "no score (predictions only)" if trial.score is None else f"{trial.score:.2f}"
        print(f"{task.name} {shots}-shot seed {seed}: {score}", flush=True)
    valid = [x for x in scores if x is not None]
    results.append({"shots": shots, "trials": scores,
                    "mean": float(np.nanmean(valid)) if valid else None,
                    "stddev": float(np.nanstd(valid)) if valid else None})
  return results
