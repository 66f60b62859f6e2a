"""Prompts, decoding settings, post-processing and demonstration selection, as the reference."""
import math
import random

import numpy as np
import pytest

from flamingo_jax.evaluate import catalog, datasets, demonstrations, prompts
from flamingo_jax.generate import DecodeSettings

CAP = [datasets.CaptionExample(f"/i/{i}.jpg", f" caption {i} ", i, (f"caption {i}",)) for i in range(3)]
VQA = [datasets.VQAExample(f"/v/{i}.jpg", f"what is {i}?", i, ({"answer": f"ans{i}"}, {"answer": "x"}))
       for i in range(3)]
HM = [datasets.ClassificationExample(f"/h/{i}.png", i % 2, i, f"text {i}") for i in range(3)]
IMNET = [datasets.ClassificationExample(f"/n/{i}.JPEG", i, i) for i in range(3)]


def test_captioning_prompt():
  task = catalog.get_task("coco")
  assert prompts.build_prompt(task, CAP[:2], CAP[2], 2) == (
      "<image>Output:caption 0<|endofchunk|>\n<image>Output:caption 1<|endofchunk|>\n<image>Output:")
  # Zero-shot: two text-only demonstrations, only the query image.
  assert prompts.build_prompt(task, CAP[:2], CAP[2], 0) == (
      "Output:caption 0<|endofchunk|>\nOutput:caption 1<|endofchunk|>\n<image>Output:")
  assert prompts.prompt_images(task, CAP[:2], CAP[2], 0) == ["/i/2.jpg"]
  assert prompts.prompt_images(task, CAP[:2], CAP[2], 2) == ["/i/0.jpg", "/i/1.jpg", "/i/2.jpg"]


def test_vqa_prompt_uses_the_first_answer():
  task = catalog.get_task("vqav2")
  assert prompts.build_prompt(task, VQA[:1], VQA[2], 1) == (
      "<image>Question:what is 0? Short answer:ans0<|endofchunk|>\n<image>Question:what is 2? Short answer:")


def test_classification_prompts_and_the_zero_shot_image_bug():
  hm = catalog.get_task("hateful_memes")
  names = datasets.HATEFUL_MEMES_CLASSES
  assert prompts.build_prompt(hm, HM[:2], HM[2], 0, names) == (
      "is an image with: 'text 0' written on it. Is it hateful? Answer:no<|endofchunk|>"
      "is an image with: 'text 1' written on it. Is it hateful? Answer:yes<|endofchunk|>"
      "<image>is an image with: 'text 2' written on it. Is it hateful? Answer:")
  # Correct: the query's only <image> gets the query image. The reference keeps the demo images,
  # so its only <image> token attends to the first demonstration image.
  assert prompts.prompt_images(hm, HM[:2], HM[2], 0) == ["/h/2.png"]
  assert prompts.prompt_images(hm, HM[:2], HM[2], 0, reference_zero_shot_images=True) == [
      "/h/0.png", "/h/1.png", "/h/2.png"]
  imnet = catalog.get_task("imagenet")
  assert prompts.build_prompt(imnet, IMNET[:1], IMNET[2], 1, ("tench", "goldfish", "shark")) == (
      "<image>Output:tench<|endofchunk|><image>Output:")


def test_decoding_settings_per_task():
  for name in ("coco", "flickr30"):
    assert catalog.get_task(name).decoding == DecodeSettings(num_beams=3, max_new_tokens=20, min_new_tokens=0, length_penalty=0.0)
  for name in ("vqav2", "ok_vqa", "vizwiz"):
    assert catalog.get_task(name).decoding == DecodeSettings(num_beams=3, max_new_tokens=5, min_new_tokens=0, length_penalty=0.0)
  assert catalog.get_task("textvqa").decoding == DecodeSettings(num_beams=3, max_new_tokens=10, min_new_tokens=0, length_penalty=0.0)
  assert catalog.get_task("hateful_memes").decoding is None
  assert [prompts.effective_shots(s) for s in (0, 1, 4)] == [2, 1, 4]
  with pytest.raises(ValueError, match="Unknown task"):
    catalog.get_task("gqa")


@pytest.mark.parametrize("text", ['a "dog" runs Output: x', "plain", ' two cats"', "OutputOutput"])
def test_caption_postprocess_matches_reference(text):
  from open_flamingo.eval.coco_metric import postprocess_captioning_generation
  assert prompts.postprocess_caption(text) == postprocess_captioning_generation(text).replace('"', "")


def test_random_plan_matches_reference_sampling():
  """The reference: np.random.seed(seed); test subset; query set; random.seed(seed); then one
  random.sample(query_set, k) per example (here in subset order, as on one GPU before shuffling)."""
  seed, n_test, n_train, num, k, qsize = 42, 50, 300, 20, 4, 64
  np.random.seed(seed)
  ref_test = np.random.choice(n_test, num, replace=False)
  ref_query = list(np.random.choice(n_train, qsize, replace=False))
  random.seed(seed)
  ref_demos = [random.sample(ref_query, k) for _ in range(num)]
  plan = demonstrations.random_plan(n_test, n_train, num, k, seed, qsize)
  np.testing.assert_array_equal(plan.test, ref_test)
  assert plan.demos == [[int(x) for x in d] for d in ref_demos]
  full = demonstrations.random_plan(n_test, n_train, -1, k, seed, qsize)
  assert sorted(full.test.tolist()) == list(range(n_test))  # all of them, permuted
  small = demonstrations.random_plan(5, 3, -1, 2, seed, 2048)  # query set clamped to the split
  assert all(set(d) <= {0, 1, 2} for d in small.demos)


def _reference_loop(n_test, n_train, num, k, seed, qsize, batch_size, ensembling):
  """open_flamingo's evaluate_classification draws, with torch's own sampler and loader: (the
  evaluation order, each example's demonstrations, [pass][example] their ensembling orders)."""
  import torch
  np.random.seed(seed)
  subset = torch.utils.data.Subset(list(range(n_test)), np.random.choice(n_test, num, replace=False))
  sampler = torch.utils.data.distributed.DistributedSampler(subset, num_replicas=1, rank=0)  # (one GPU)
  loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, sampler=sampler, collate_fn=list)
  query_set = list(np.random.choice(n_train, qsize, replace=False))
  random.seed(seed)
  passes = min(6, math.factorial(k)) if ensembling else 1
  order, demos, orders = [], [], [[] for _ in range(passes)]
  for batch in loader:
    drawn = [random.sample(query_set, k) for _ in batch]
    order += [int(i) for i in batch]
    demos += [[int(x) for x in d] for d in drawn]
    for p in range(passes):
      for d in drawn:
        if ensembling:
          random.shuffle(d)
        orders[p].append([int(x) for x in d])
  return order, demos, orders


@pytest.mark.parametrize("num,batch_size,ensembling", [(20, 8, False), (13, 4, True), (40, 40, True)])
def test_reference_demo_order_is_the_reference_loops(num, batch_size, ensembling):
  """The reference's evaluation order (its DistributedSampler's permutation, made here without
  torch), its demonstrations and its ensembling shuffles, as its own loop draws them."""
  import torch
  for n in (1, 2, 7, 1000):
    generator = torch.Generator()
    generator.manual_seed(0)
    assert demonstrations.sampler_order(n).tolist() == torch.randperm(n, generator=generator).tolist()
  seed, k = 42, 3
  order, demos, orders = _reference_loop(60, 300, num, k, seed, 64, batch_size, ensembling)
  plan = demonstrations.random_plan(60, 300, num, k, seed, 64, demonstrations.ReferenceOrder(batch_size, ensembling))
  assert plan.test.tolist() == order and plan.demos == demos
  ours = demonstrations.random_plan(60, 300, num, k, seed, 64)
  assert sorted(ours.test.tolist()) == sorted(order) and ours.test.tolist() != order  # the same subset, in subset order
  for start in range(0, num, 5):  # our batches (5) need not be the reference's
    got = demonstrations.ensemble_orders(plan.demos[start:start + 5], k, ensembling, seed, offset=start, plan=plan)
    assert got == ([o[start:start + 5] for o in orders] if ensembling else [plan.demos[start:start + 5]])


def test_rices_puts_the_most_similar_demo_last():
  train = np.eye(4, dtype=np.float32)
  query = np.array([[0.1, 0.9, 0.3, 0.0], [0.05, 0.0, 0.2, 1.0]], np.float32)
  np.testing.assert_array_equal(demonstrations.rices_select(query, train, 3), [[0, 2, 1], [0, 2, 3]])
  plan = demonstrations.rices_plan(2, -1, 2, 0, train, lambda idx: query[idx])
  assert [d[-1] for d in plan.demos] == [int(np.argmax(query[i])) for i in plan.test]


def test_ensemble_orders():
  demos = [[1, 2, 3], [4, 5, 6]]
  passes = demonstrations.ensemble_orders(demos, 3, True, seed=1)
  assert len(passes) == 6 and all(sorted(p[0]) == [1, 2, 3] for p in passes)
  assert len({tuple(p[0]) for p in passes}) > 1
  # An example's permutations do not depend on how the test set is batched.
  alone = demonstrations.ensemble_orders(demos[1:], 3, True, seed=1, offset=1)
  assert [p[0] for p in alone] == [p[1] for p in passes]
  assert demonstrations.ensemble_orders(demos, 3, False, seed=1) == [demos]
  assert demonstrations.num_permutations(2, True) == 2
