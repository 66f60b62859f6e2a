"""Which test examples are evaluated, and which demonstrations each one gets.

Random (OpenFlamingo's procedure, seeded): a NumPy `RandomState(seed)` draws the test subset
(`choice(len(test), num_samples, replace=False)`, a permutation even when it covers the whole
split) and then the query set (`choice(len(train), query_set_size, replace=False)`), exactly as
the reference's `np.random.seed(seed)` does; then every test example draws its demonstrations
from the query set with `random.Random(seed).sample`, in evaluation order. (The reference draws
in each GPU's DistributedSampler order, so its assignment changes with the GPU count; ours does
not change with the device or host count.)

RICES: the train examples whose CLIP image embeddings (L2-normalised) have the largest dot
product with the query's, ordered least to most similar, so the closest one is next to the query.
The reference does no query-set subsampling with RICES, and neither do we.

Prompt ensembling shuffles each example's demonstrations in place once per pass (the first pass
too), min(6, k!) passes, as the reference does.
"""
from __future__ import annotations

import dataclasses
import math
import random
from typing import Callable

import numpy as np

_ENSEMBLE_SALT = 7919  # separates the permutation stream from the sampling stream


@dataclasses.dataclass(frozen=True)
class Plan:
  """Evaluation order and demonstrations: `demos[i]` (train indices) go with `test[i]`."""
  test: np.ndarray
  demos: list[list[int]]


def _test_subset(rs: np.random.RandomState, n_test: int, num_samples: int) -> np.ndarray:
  n = n_test if num_samples is None or num_samples <= 0 else num_samples
  if n > n_test:
    raise ValueError(f"num_samples={n} exceeds the {n_test} test examples")
  return rs.choice(n_test, n, replace=False)


def random_plan(n_test: int, n_train: int, num_samples: int, k: int, seed: int,
                query_set_size: int = 2048) -> Plan:
  """Seeded random demonstrations from a query set of the train split."""
  rs = np.random.RandomState(seed)
  test = _test_subset(rs, n_test, num_samples)
  # The reference fails when the train split is smaller than the query set; we use all of it.
  query_set = [int(i) for i in rs.choice(n_train, min(query_set_size, n_train), replace=False)]
  if k > len(query_set):
    raise ValueError(f"{k} demonstrations requested from a query set of {len(query_set)}")
  rng = random.Random(seed)
  return Plan(test, [rng.sample(query_set, k) for _ in range(len(test))])


def rices_select(query_features: np.ndarray, train_features: np.ndarray, k: int) -> np.ndarray:
  """(Q, D), (N, D) normalised embeddings -> (Q, k) train indices, most similar last."""
  if k > len(train_features):
    raise ValueError(f"{k} demonstrations requested from {len(train_features)} train examples")
  sim = np.asarray(query_features, np.float32) @ np.asarray(train_features, np.float32).T
  top = np.argsort(-sim, axis=-1, kind="stable")[:, :k]
  return top[:, ::-1]


def rices_plan(n_test: int, num_samples: int, k: int, seed: int, train_features: np.ndarray,
               test_features: Callable[[np.ndarray], np.ndarray], batch_size: int = 256) -> Plan:
  """Retrieval-based demonstrations; `test_features(indices)` embeds the given test examples."""
  test = _test_subset(np.random.RandomState(seed), n_test, num_samples)
  demos = []
  for start in range(0, len(test), batch_size):
    chunk = test[start:start + batch_size]
    demos.extend(rices_select(test_features(chunk), train_features, k).tolist())
  return Plan(test, demos)


def num_permutations(k: int, ensembling: bool) -> int:
  return min(6, math.factorial(k)) if ensembling else 1


def ensemble_orders(demos: list[list[int]], k: int, ensembling: bool, seed: int,
                    offset: int = 0) -> list[list[list[int]]]:
  """Demonstration orders per pass: [pass][example] -> train indices. Without ensembling, one
  pass in the plan's order. `offset` (the batch's first position) keeps the shuffles of an
  example the same whatever the batch size."""
  if not ensembling:
    return [demos]
  passes = num_permutations(k, True)
  per_example = []
  for i, d in enumerate(demos):
    rng, order, orders = random.Random(seed * _ENSEMBLE_SALT + offset + i), list(d), []
    for _ in range(passes):
      rng.shuffle(order)
      orders.append(list(order))
    per_example.append(orders)
  return [[orders[p] for orders in per_example] for p in range(passes)]
