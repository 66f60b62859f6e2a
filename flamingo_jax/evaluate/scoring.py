"""A trial's score from its outputs, one function per metric; a task's record names its own.

  generation tasks: outputs = [(test example, post-processed generation), ...]
  classification:   outputs = (test examples, (N, C) class scores)
  score(outputs, eval_cfg, section, class_names) -> Trial(score or None, predictions)

`eval_cfg` is the evaluation config (configs/eval_common.py), `section` the task's `data.<task>`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from flamingo_jax.evaluate import datasets
from flamingo_jax.evaluate.metrics import cider, classification, vqa


@dataclasses.dataclass
class Trial:
  score: float | None  # None: the test split has no annotations (predictions only)
  predictions: list[dict]


def cider_score(outputs: list[tuple[Any, str]], eval_cfg, section, class_names=()) -> Trial:
  """CIDEr-D of one caption per image against the references (the section's COCO-format
  `annotations_json` if set, else the Karpathy sentences)."""
  captions = {ex.image_id: text for ex, text in outputs}  # one caption per image, as the reference
  refs = datasets.caption_references([ex for ex, _ in outputs], section.get("annotations_json", "") or None)
  score = cider.caption_cider(refs, captions, eval_cfg.cider_tokenizer)
  return Trial(score, [{"image_id": k, "caption": v} for k, v in captions.items()])


def vqa_score(outputs: list[tuple[Any, str]], eval_cfg, section, class_names=()) -> Trial:
  """VQA accuracy; no score without annotations (test-dev: predictions in EvalAI's format)."""
  preds = [{"question_id": ex.question_id, "answer": text} for ex, text in outputs]
  if any(ex.answers is None for ex, _ in outputs):
    return Trial(None, preds)
  score = vqa.vqa_accuracy({p["question_id"]: p["answer"] for p in preds},
                           {ex.question_id: ex.answers for ex, _ in outputs}, eval_cfg.vqa_normalization)
  return Trial(score, preds)


def _class_predictions(outputs, class_names) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
  examples, scores = outputs
  pred, confidence = classification.predict(scores)
  labels = np.asarray([ex.label for ex in examples])
  rows = [{"id": ex.id, "gt_label": class_names[ex.label], "pred_label": class_names[int(p)], "pred_score": float(c)}
          for ex, p, c in zip(examples, pred, confidence)]
  return labels, pred, confidence, rows


def roc_auc_score(outputs, eval_cfg, section, class_names) -> Trial:
  """ROC AUC x 100 of the positive class (HatefulMemes' "yes"), as the reference scores it."""
  labels, pred, confidence, rows = _class_predictions(outputs, class_names)
  return Trial(100.0 * classification.roc_auc(labels, classification.positive_probability(pred, confidence)), rows)


def top1_score(outputs, eval_cfg, section, class_names) -> Trial:
  """Top-1 accuracy in percent."""
  labels, pred, _, rows = _class_predictions(outputs, class_names)
  return Trial(100.0 * classification.top1_accuracy(labels, pred), rows)
