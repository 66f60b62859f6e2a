"""Which test examples are evaluated, and which demonstrations each one gets.

Random (OpenFlamingo's procedure, seeded): a NumPy `RandomState(seed)` draws the test subset
(`choice(len(test), num_samples, replace=False)`, a permutation even when it covers the whole
split) and then the query set (`choice(len(train), query_set_size, replace=False)`), exactly as
the reference's `np.random.seed(seed)` does; then every test example draws its demonstrations
from the query set with `random.Random(seed).sample`, in evaluation order.

Evaluation order: ours is the test subset's, whatever the device or host count. The reference's
(`reference_demo_order`) is its DataLoader's: a `DistributedSampler` (shuffle, seed 0) permutes
the subset, so demonstrations go to other queries than in subset order (and, on several GPUs, to
others again); its prompt-ensembling shuffles come from the same `random` stream, batch by batch,
after the batch's draws. `sampler_order` reproduces the permutation without torch.

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
  """Evaluation order and demonstrations: `demos[i]` (train indices) go with `test[i]`;
  `orders[p][i]`, when set, the demonstrations' order in prompt-ensembling pass p (drawn with
  them, as the reference does)."""
  test: np.ndarray
  demos: list[list[int]]
  orders: list[list[list[int]]] | None = None


@dataclasses.dataclass(frozen=True)
class ReferenceOrder:
  """The reference's evaluation loop, for `reference_demo_order`: its loader's batch size and
  whether it shuffles demonstrations for prompt ensembling."""
  batch_size: int
  ensembling: bool


def sampler_order(n: int, seed: int = 0) -> np.ndarray:
  """The order in which torch's `DistributedSampler(shuffle=True, seed=seed)` visits n items in
  a one-process job: `torch.randperm(n)` from a CPU generator seeded with `seed`, i.e. a
  Fisher-Yates pass drawing `mt19937() % (n - i)` for each i, reproduced with NumPy's MT19937
  (seeded as torch and the legacy `RandomState` seed it).

    sampler_order(5) -> [4, 0, 1, 3, 2]   # torch.randperm(5, generator=manual_seed(0))
  """
  generator = np.random.MT19937()
  generator._legacy_seeding(seed)  # pylint: disable=protected-access  (MT19937's own init_genrand)
  draws = generator.random_raw(max(n - 1, 0))
  order = list(range(n))
  for i in range(n - 1):
    j = i + int(draws[i]) % (n - i)
    order[i], order[j] = order[j], order[i]
  return np.asarray(order, np.int64)


def _in_reference_batches(n: int, draw_batch: Callable[[int, int], list[list[int]]], k: int,
                          reference: ReferenceOrder, rng: random.Random) -> tuple[list, list | None]:
  """(demos, orders) as the reference's loop makes them: per batch of its loader, the batch's
  demonstrations (`draw_batch(start, size)`), then, with ensembling, every pass shuffles each
  example's list in place in turn, from the same random stream."""
  passes = num_permutations(k, reference.ensembling)
  demos, orders = [], [[] for _ in range(passes)]
  for start in range(0, n, reference.batch_size):
    batch = [list(d) for d in draw_batch(start, min(reference.batch_size, n - start))]
    demos += [list(d) for d in batch]
    for p in range(passes):
      for d in batch:
        if reference.ensembling:
          rng.shuffle(d)
        orders[p].append(list(d))
  return demos, (orders if reference.ensembling else None)


def _test_subset(rs: np.random.RandomState, n_test: int, num_samples: int) -> np.ndarray:
  n = n_test if num_samples is None or num_samples <= 0 else num_samples
  if n > n_test:
    raise ValueError(f"num_samples={n} exceeds the {n_test} test examples")
  return rs.choice(n_test, n, replace=False)


def random_plan(n_test: int, n_train: int, num_samples: int, k: int, seed: int,
                query_set_size: int = 2048, reference: ReferenceOrder | None = None) -> Plan:
  """Seeded random demonstrations from a query set of the train split; in the reference's
  evaluation order with `reference`."""
  rs = np.random.RandomState(seed)
  test = _test_subset(rs, n_test, num_samples)
  if reference:
    test = test[sampler_order(len(test))]
  # The reference fails when the train split is smaller than the query set; we use all of it.
  query_set = [int(i) for i in rs.choice(n_train, min(query_set_size, n_train), replace=False)]
  if k > len(query_set):
    raise ValueError(f"{k} demonstrations requested from a query set of {len(query_set)}")
  rng = random.Random(seed)
  if reference:
    draw = lambda start, size: [rng.sample(query_set, k) for _ in range(size)]
    return Plan(test, *_in_reference_batches(len(test), draw, k, reference, rng))
  return Plan(test, [rng.sample(query_set, k) for _ in range(len(test))])


def rices_select(query_features: np.ndarray, train_features: np.ndarray, k: int) -> np.ndarray:
  """(Q, D), (N, D) normalised embeddings -> (Q, k) train indices, most similar last."""
  if k > len(train_features):
    raise ValueError(f"{k} demonstrations requested from {len(train_features)} train examples")
  sim = np.asarray(query_features, np.float32) @ np.asarray(train_features, np.float32).T
  top = np.argsort(-sim, axis=-1, kind="stable")[:, :k]
  return top[:, ::-1]


def rices_plan(n_test: int, num_samples: int, k: int, seed: int, train_features: np.ndarray,
               test_features: Callable[[np.ndarray], np.ndarray], batch_size: int = 256,
               reference: ReferenceOrder | None = None) -> Plan:
  """Retrieval-based demonstrations; `test_features(indices)` embeds the given test examples; in
  the reference's evaluation order (and ensembling shuffles) with `reference`."""
  test = _test_subset(np.random.RandomState(seed), n_test, num_samples)
  if reference:
    test = test[sampler_order(len(test))]
  demos = []
  for start in range(0, len(test), batch_size):
    chunk = test[start:start + batch_size]
    demos.extend(rices_select(test_features(chunk), train_features, k).tolist())
  if reference:
    draw = lambda start, size: demos[start:start + size]
    return Plan(test, *_in_reference_batches(len(test), draw, k, reference, random.Random(seed)))
  return Plan(test, demos)


def num_permutations(k: int, ensembling: bool) -> int:
  return min(6, math.factorial(k)) if ensembling else 1


def ensemble_orders(demos: list[list[int]], k: int, ensembling: bool, seed: int,
                    offset: int = 0, plan: Plan | None = None) -> list[list[list[int]]]:
  """Demonstration orders per pass: [pass][example] -> train indices, for the batch `demos` at
  `offset` in the plan. Without ensembling, one pass in the plan's order; with the plan's own
  orders (the reference's), those; else each example shuffled from its own seed, the same
  whatever the batch size."""
  if not ensembling:
    return [demos]
  if plan is not None and plan.orders is not None:
    return [orders[offset:offset + len(demos)] for orders in plan.orders]
  passes = num_permutations(k, True)
  per_example = []
  for i, d in enumerate(demos):
    rng, order, orders = random.Random(seed * _ENSEMBLE_SALT + offset + i), list(d), []
    for _ in range(passes):
      rng.shuffle(order)
      orders.append(list(order))
    per_example.append(orders)
  return [[orders[p] for orders in per_example] for p in range(passes)]
