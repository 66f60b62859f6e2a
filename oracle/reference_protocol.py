"""open_flamingo's own `evaluate_captioning` and `evaluate_classification` on an oracle model,
for the reference-protocol comparison (tests/evaluate/test_reference_protocol.py).

`RecordingEvalModel` adds to `ReferenceEvalModel` what the classification loop calls
(`get_rank_classifications`, as the spec's section 5.7 describes the released EvalModel: the
context cached or not, each class name's tokens after it, their mean log-probability) and keeps
every prompt and output, so a test can compare them with ours one by one.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os

import torch

from flamingo_jax.evaluate import prompts
from oracle.reference_eval import ReferenceEvalModel, _reference_eval_modules


class RecordingEvalModel(ReferenceEvalModel):
  """The reference loop's model, keeping (prompt, output) of every generation and (prompt, class
  scores) of every classification."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.generated: list[tuple[str, str]] = []
    self.scored: list[tuple[str, list[float]]] = []

  def get_outputs(self, batch_text, batch_images, *args, **kwargs):
    out = super().get_outputs(batch_text, batch_images, *args, **kwargs)
    self.generated += list(zip(batch_text, out))
    return out

  def get_hateful_memes_prompt(self, text, label=None) -> str:
    return prompts.hateful_memes_prompt(text, label)

  def get_rank_classifications(self, batch_text, batch_images, all_class_names, use_cache, normalize_length):
    """(B, C) mean log-probability of each class name's tokens after each context."""
    assert normalize_length, "the loop always normalizes by the name's length"
    vision_x = self._images(batch_images)
    ids, mask = self._context(batch_text)
    b = ids.shape[0]
    scores = []
    with torch.inference_mode():
      if use_cache:
        self.model.cache_media(input_ids=ids, vision_x=vision_x)
        context = self.model(vision_x=None, lang_x=ids, attention_mask=mask, clear_conditioned_layers=False,
                             use_cache=True)
      for name in all_class_names:
        tokens = torch.tensor(self.tokenizer(name, add_special_tokens=False)["input_ids"]).repeat(b, 1)
        m = tokens.shape[1]
        if use_cache:  # one token at a time on a copy of the context's cache, no attention mask
          logits, cache = [context.logits], copy.deepcopy(context.past_key_values)
          for t in range(m):
            out = self.model(vision_x=None, lang_x=tokens[:, t:t + 1], clear_conditioned_layers=False,
                             past_key_values=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.past_key_values
          logits = torch.cat(logits, dim=1)
        else:  # one forward over context + name
          logits = self.model(vision_x=vision_x, lang_x=torch.cat([ids, tokens], dim=1),
                              attention_mask=torch.cat([mask, torch.ones_like(tokens)], dim=1)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)[:, -m - 1:-1]
        scores.append(torch.gather(logprobs, 2, tokens[:, :, None])[..., 0].mean(dim=1))
      if use_cache:
        self.model.uncache_media()
    scores = torch.stack(scores, dim=1)
    self.scored += list(zip(batch_text, scores.tolist()))
    return scores


@contextlib.contextmanager
def _cider_only():
  """pycocoevalcap's COCOEvalCap scores BLEU, METEOR, ROUGE-L, CIDEr and SPICE; SPICE fetches
  Stanford models from the internet, which this machine cannot reach, and only CIDEr is reported:
  the others are left out (its tokenizer and CIDEr run as they are)."""
  from pycocoevalcap import eval as coco_eval  # pylint: disable=g-import-not-at-top

  class Skipped:
    """A scorer not run: NaN (four of them for BLEU-1..4), no per-image scores."""

    def __init__(self, orders: int = 0):
      self.orders = orders

    def method(self):
      return "skipped"

    def compute_score(self, gts, res):
      if self.orders:
        return [float("nan")] * self.orders, [[] for _ in range(self.orders)]
      return float("nan"), []

  saved = {name: getattr(coco_eval, name) for name in ("Bleu", "Meteor", "Rouge", "Spice")}
  for name in saved:
    setattr(coco_eval, name, Skipped)
  try:
    yield
  finally:
    for name, value in saved.items():
      setattr(coco_eval, name, value)


def _in(workdir: str, fn, *args, **kwargs):
  """Runs `fn` in `workdir` (the reference writes temporary results files in the working
  directory) without its prints."""
  here = os.getcwd()
  os.chdir(workdir)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      return fn(*args, **kwargs)
  finally:
    os.chdir(here)


def evaluate_captioning(model: RecordingEvalModel, coco: dict, shots: int, queries: int, query_set_size: int,
                        workdir: str, seed: int = 42, batch_size: int = 8) -> float:
  """open_flamingo's `evaluate_captioning` on COCO-Karpathy-format files (`coco`:
  oracle/eval_fixtures.write_karpathy's paths): CIDEr x 100."""
  _, evaluate = _reference_eval_modules()
  args = argparse.Namespace(
      model="open_flamingo", batch_size=batch_size, num_samples=queries, query_set_size=query_set_size,
      rices=False, rank=0, world_size=1, coco_train_image_dir_path=coco["train_image_dir"],
      coco_val_image_dir_path=coco["val_image_dir"], coco_karpathy_json_path=coco["karpathy_json"],
      coco_annotations_json_path=coco["annotations_json"])
  with _cider_only():
    return _in(workdir, evaluate.evaluate_captioning, args, model, seed=seed, num_shots=shots, dataset_name="coco")


def evaluate_hateful_memes(model: RecordingEvalModel, memes: dict, shots: int, queries: int,
                           query_set_size: int, workdir: str, seed: int = 42, batch_size: int = 8,
                           kv_cache: bool = True) -> float:
  """open_flamingo's `evaluate_classification` on Hateful-Memes-format files (`memes`:
  oracle/eval_fixtures.write_hateful_memes's paths): ROC AUC."""
  _, evaluate = _reference_eval_modules()
  args = argparse.Namespace(
      model="open_flamingo", batch_size=batch_size, num_samples=queries, query_set_size=query_set_size,
      rices=False, rank=0, world_size=1, hateful_memes_image_dir_path=memes["image_dir"],
      hateful_memes_train_annotations_json_path=memes["train_jsonl"],
      hateful_memes_test_annotations_json_path=memes["test_jsonl"])
  return _in(workdir, evaluate.evaluate_classification, args, model, seed=seed, num_shots=shots,
             dataset_name="hateful_memes", no_kv_caching=not kv_cache)
