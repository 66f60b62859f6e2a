"""CIDEr-D as the COCO caption evaluation (pycocoevalcap) computes it, in pure Python.

OpenFlamingo scores captions with `pycocoevalcap`: Stanford's PTB tokenizer (Java, lowercased,
punctuation tokens dropped), then CIDEr-D over the evaluated images (document frequencies from
their references, n = 1..4, Gaussian length penalty sigma = 6, clipped counts, x 10). It reports
CIDEr x 100.

`ptb_tokenize` (ptb.py) is that tokenizer in Python, so that no Java is needed and the score
does not depend on the machine; `stanford_tokenize` calls the Java tokenizer bundled with
pycocoevalcap. `cider_d` is the scorer, with
pycocoevalcap's quirks kept on purpose: an n-gram absent from every reference gets document
frequency 1, and the "length" of the Gaussian penalty counts bigrams, not words.
"""
from __future__ import annotations

import collections
import math
from typing import Hashable, Mapping, Sequence

import numpy as np

from flamingo_jax.evaluate.metrics.ptb import ptb_tokenize, stanford_tokenize

def _ngram_counts(sentence: str, n: int) -> collections.Counter:
  words = sentence.split()
  return collections.Counter(tuple(words[i:i + k]) for k in range(1, n + 1)
                             for i in range(len(words) - k + 1))


def _tfidf(counts: collections.Counter, doc_freq: Mapping, log_num_docs: float, n: int):
  """Per-order tf-idf vectors, their norms, and pycocoevalcap's "length" (the bigram count)."""
  vec = [dict() for _ in range(n)]
  norm = np.zeros(n)
  length = 0
  for gram, tf in counts.items():
    order = len(gram) - 1
    weight = tf * (log_num_docs - math.log(max(1.0, doc_freq.get(gram, 0.0))))
    vec[order][gram] = weight
    norm[order] += weight * weight
    if order == 1:
      length += tf
  return vec, np.sqrt(norm), length


def _similarity(hyp, ref, n: int, sigma: float) -> np.ndarray:
  (vh, nh, lh), (vr, nr, lr) = hyp, ref
  val = np.zeros(n)
  for order in range(n):
    for gram, weight in vh[order].items():
      ref_weight = vr[order].get(gram, 0.0)
      val[order] += min(weight, ref_weight) * ref_weight  # clipped
    if nh[order] != 0 and nr[order] != 0:
      val[order] /= nh[order] * nr[order]
  return val * math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))


def cider_d(references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str],
            n: int = 4, sigma: float = 6.0) -> tuple[float, dict[Hashable, float]]:
  """CIDEr-D of tokenized hypotheses (one per image) against tokenized references.

  Returns (corpus score, per-image scores), on pycocoevalcap's scale (x 100 gives the usual number).
  """
  if set(references) != set(hypotheses):
    raise ValueError("References and hypotheses must cover the same images; "
                     f"{len(set(references) ^ set(hypotheses))} differ")
  if not hypotheses:
    raise ValueError("No captions to score")
  keys = list(hypotheses)
  ref_counts = {k: [_ngram_counts(r, n) for r in references[k]] for k in keys}
  doc_freq = collections.Counter()
  for counts in ref_counts.values():
    doc_freq.update(set().union(*(c.keys() for c in counts)))
  log_num_docs = math.log(float(len(keys)))
  per_image = {}
  for k in keys:
    if not ref_counts[k]:
      raise ValueError(f"Image {k!r} has no reference captions")
    hyp = _tfidf(_ngram_counts(hypotheses[k], n), doc_freq, log_num_docs, n)
    total = sum(_similarity(hyp, _tfidf(rc, doc_freq, log_num_docs, n), n, sigma)
                for rc in ref_counts[k])
    per_image[k] = float(np.mean(total) / len(ref_counts[k]) * 10.0)
  return float(np.mean(list(per_image.values()))), per_image


def caption_cider(references: Mapping[Hashable, Sequence[str]], captions: Mapping[Hashable, str],
                  tokenizer: str = "python") -> float:
  """CIDEr x 100 of raw captions against raw references, over the captioned images only (as the
  reference restricts the COCO evaluation to the result image ids). tokenizer: 'python' | 'stanford'."""
  missing = [k for k in captions if k not in references]
  if missing:
    raise KeyError(f"{len(missing)} captioned images have no references, e.g. {missing[:3]}")
  refs = {k: list(references[k]) for k in captions}
  if tokenizer == "python":
    tok_refs = {k: [ptb_tokenize(r) for r in v] for k, v in refs.items()}
    tok_hyps = {k: ptb_tokenize(c) for k, c in captions.items()}
  elif tokenizer == "stanford":
    tok_refs = stanford_tokenize(refs)
    tok_hyps = {k: v[0] for k, v in stanford_tokenize({k: [c] for k, c in captions.items()}).items()}
  else:
    raise ValueError(f"Unknown CIDEr tokenizer {tokenizer!r} (python | stanford)")
  return 100.0 * cider_d(tok_refs, tok_hyps)[0]
