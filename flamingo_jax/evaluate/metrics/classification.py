"""Classification by class log-likelihood: predictions, ROC AUC (HatefulMemes), top-1 (ImageNet).

Each class gets a score (the mean log-probability of its name's tokens, averaged over prompt
permutations when ensembling); the prediction is the best class, with confidence
exp(best - logsumexp(all)), i.e. a softmax over the class scores, as OpenFlamingo computes it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def predict(class_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(B, C) class scores -> (best class (B,), its softmax probability over classes (B,))."""
  scores = np.asarray(class_scores, np.float64)
  best = scores.argmax(axis=-1)
  top = np.take_along_axis(scores, best[:, None], axis=-1)[:, 0]
  m = scores.max(axis=-1, keepdims=True)
  logsumexp = m[:, 0] + np.log(np.exp(scores - m).sum(axis=-1))
  return best, np.exp(top - logsumexp)


def positive_probability(pred_class: np.ndarray, confidence: np.ndarray, positive: int = 1) -> np.ndarray:
  """P(positive class) from a binary prediction and its confidence (p, or 1 - p if negative)."""
  pred_class, confidence = np.asarray(pred_class), np.asarray(confidence, np.float64)
  return np.where(pred_class == positive, confidence, 1.0 - confidence)


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
  """Area under the ROC curve of binary labels (1 = positive) ranked by scores; ties count half.

  Equals scikit-learn's `roc_auc_score` (the Mann-Whitney U statistic with midranks).
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, np.float64)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    raise ValueError("ROC AUC needs both positive and negative examples")
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  ranks = np.empty(len(scores))
  # Midranks over runs of tied scores.
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], len(scores)]
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = (s + e + 1) / 2.0
  u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def top1_accuracy(labels: Sequence[int], pred_class: Sequence[int]) -> float:
  labels, pred_class = np.asarray(labels), np.asarray(pred_class)
  if len(labels) == 0:
    raise ValueError("No predictions to score")
  return float((labels == pred_class).mean())
