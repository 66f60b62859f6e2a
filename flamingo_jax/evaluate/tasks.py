"""The evaluation loops: captioning and VQA by generation, classification by class likelihood.

One trial = one (task, shot count, seed): choose the test subset and demonstrations, run the model
over it batch by batch, post-process, score. `evaluate_task` runs every shot count and seed and
aggregates trials as the reference does (NaN-aware mean and standard deviation).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np

from flamingo_jax import paths
from flamingo_jax.evaluate import clip_features, datasets, demonstrations, prompts
from flamingo_jax.evaluate.metrics import cider, classification, vqa
from flamingo_jax.evaluate.inference import EvalModel


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to evaluate; mirrors `configs/eval_common.py` (see there for each field)."""
  num_samples: int = -1
  query_set_size: int = 2048
  batch_size: int = 8
  demos: str = "random"                       # 'random' | 'rices'
  rices_cache_dir: str = ""
  classification_kv_cache: bool = True
  prompt_ensembling: bool = False
  reference_zero_shot_classification_images: bool = False
  cider_tokenizer: str = "python"             # 'python' | 'stanford'
  vqa_normalization: str = "reference"        # 'reference' | 'official'
  caption_annotations: str = ""               # COCO-format references (else the Karpathy sentences)
  out_dir: str = ""                           # per-trial predictions go here when set
  progress: bool = True


@dataclasses.dataclass
class Trial:
  score: float | None
  predictions: list[dict]


def _progress(total: int, desc: str, enabled: bool):
  if not enabled or jax.process_index() != 0:
    return None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=desc, unit="ex", dynamic_ncols=True)


def make_plan(model: EvalModel, task: prompts.Task, data: datasets.TaskData, shots: int, seed: int,
              s: Settings) -> demonstrations.Plan:
  k = prompts.effective_shots(shots)
  if s.demos == "random":
    return demonstrations.random_plan(len(data.test), len(data.train), s.num_samples, k, seed,
                                      s.query_set_size)
  if s.demos != "rices":
    raise ValueError(f"Unknown demonstration selection {s.demos!r} (random | rices)")
  bar = _progress(len(data.train), f"RICES features {task.name} (train)", s.progress)
  train = clip_features.load_or_compute(
      s.rices_cache_dir, task.rices_name, len(data.train),
      lambda: model.embed_images([e.image_path for e in data.train], max(64, s.batch_size),
                                 bar.update if bar else None),
      write=jax.process_index() == 0)
  if bar:
    bar.close()
  embed = lambda idx: model.embed_images([data.test[i].image_path for i in idx], max(64, s.batch_size))
  return demonstrations.rices_plan(len(data.test), s.num_samples, k, seed, train, embed)


def _batches(plan: demonstrations.Plan, batch_size: int):
  for start in range(0, len(plan.test), batch_size):
    yield start, plan.test[start:start + batch_size], plan.demos[start:start + batch_size]


def _prompts(task, data, shots, test_idx, demo_orders, s: Settings):
  texts, images = [], []
  for i, demos in zip(test_idx, demo_orders):
    query, demo_examples = data.test[int(i)], [data.train[j] for j in demos]
    texts.append(prompts.build_prompt(task, demo_examples, query, shots, data.class_names))
    images.append(prompts.prompt_images(task, demo_examples, query, shots,
                                        s.reference_zero_shot_classification_images))
  return texts, images


def run_generation(model: EvalModel, task: prompts.Task, data: datasets.TaskData, shots: int,
                   seed: int, s: Settings) -> list[tuple[Any, str]]:
  """(example, post-processed generation) for every evaluated test example."""
  post = prompts.postprocessor(task)
  post("probe")  # fails now, not after an hour of generation, if e.g. NLTK data is missing
  plan = make_plan(model, task, data, shots, seed, s)
  out = []
  bar = _progress(len(plan.test), f"{task.name} {shots}-shot seed {seed}", s.progress)
  for _, test_idx, demos in _batches(plan, s.batch_size):
    texts, images = _prompts(task, data, shots, test_idx, demos, s)
    for i, text in zip(test_idx, model.generate(texts, images, task.decoding)):
      out.append((data.test[int(i)], post(text)))
    if bar:
      bar.update(len(test_idx))
  if bar:
    bar.close()
  return out


def run_classification(model: EvalModel, task: prompts.Task, data: datasets.TaskData, shots: int,
                       seed: int, s: Settings) -> tuple[list, np.ndarray]:
  """(examples, (N, C) class scores averaged over prompt permutations)."""
  plan = make_plan(model, task, data, shots, seed, s)
  k = prompts.effective_shots(shots)
  class_tokens = model.class_token_ids(data.class_names)
  examples, scores = [], []
  bar = _progress(len(plan.test), f"{task.name} {shots}-shot seed {seed}", s.progress)
  for start, test_idx, demos in _batches(plan, s.batch_size):
    passes = demonstrations.ensemble_orders(demos, k, s.prompt_ensembling, seed, offset=start)
    total = 0.0
    for orders in passes:
      texts, images = _prompts(task, data, shots, test_idx, orders, s)
      total = total + model.class_scores(texts, images, class_tokens, s.classification_kv_cache)
    scores.append(total / len(passes))
    examples.extend(data.test[int(i)] for i in test_idx)
    if bar:
      bar.update(len(test_idx))
  if bar:
    bar.close()
  return examples, np.concatenate(scores)


def run_trial(model: EvalModel, task_name: str, data: datasets.TaskData, shots: int, seed: int,
              s: Settings) -> Trial:
  """One trial: its score (None when the test split has no annotations) and its predictions."""
  task = prompts.get_task(task_name)
  if task.kind == "captioning":
    outputs = run_generation(model, task, data, shots, seed, s)
    captions = {ex.image_id: text for ex, text in outputs}  # one caption per image, as the reference
    refs = datasets.caption_references([ex for ex, _ in outputs], s.caption_annotations or None)
    score = cider.caption_cider(refs, captions, s.cider_tokenizer)
    return Trial(score, [{"image_id": k, "caption": v} for k, v in captions.items()])
  if task.kind == "vqa":
    outputs = run_generation(model, task, data, shots, seed, s)
    preds = [{"question_id": ex.question_id, "answer": text} for ex, text in outputs]
    if any(ex.answers is None for ex, _ in outputs):
      return Trial(None, preds)  # test-dev: predictions only (EvalAI format)
    score = vqa.vqa_accuracy({p["question_id"]: p["answer"] for p in preds},
                             {ex.question_id: ex.answers for ex, _ in outputs}, s.vqa_normalization)
    return Trial(score, preds)
  examples, scores = run_classification(model, task, data, shots, seed, s)
  pred, confidence = classification.predict(scores)
  labels = np.asarray([ex.label for ex in examples])
  names = data.class_names
  preds = [{"id": ex.id, "gt_label": names[ex.label], "pred_label": names[int(p)], "pred_score": float(c)}
           for ex, p, c in zip(examples, pred, confidence)]
  if task.name == "hateful_memes":
    score = 100.0 * classification.roc_auc(labels, classification.positive_probability(pred, confidence))
  else:
    score = 100.0 * classification.top1_accuracy(labels, pred)
  return Trial(score, preds)


def _write_predictions(s: Settings, task_name: str, shots: int, seed: int, trial: Trial) -> None:
  if not s.out_dir or jax.process_index() != 0:
    return
  paths.write(paths.join(s.out_dir, f"{task_name}_{shots}shot_{s.demos}_seed{seed}_predictions.json"),
              json.dumps(trial.predictions, indent=1, default=str))


def evaluate_task(model: EvalModel, task_name: str, data: datasets.TaskData, shots_list, seeds,
                  s: Settings) -> list[dict]:
  """[{"shots", "trials", "mean", "stddev"}] for each shot count, trials over `seeds`."""
  results = []
  for shots in shots_list:
    scores = []
    for seed in seeds:
      trial = run_trial(model, task_name, data, shots, seed, s)
      _write_predictions(s, task_name, shots, seed, trial)
      scores.append(trial.score)
      if s.progress and jax.process_index() == 0:
        score = "no score (predictions only)" if trial.score is None else f"{trial.score:.2f}"
        print(f"{task_name} {shots}-shot seed {seed}: {score}", flush=True)
    valid = [x for x in scores if x is not None]
    results.append({"shots": shots, "trials": scores,
                    "mean": float(np.nanmean(valid)) if valid else None,
                    "stddev": float(np.nanstd(valid)) if valid else None})
  return results
