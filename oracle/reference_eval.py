"""open_flamingo's own evaluation loop (`open_flamingo/eval/evaluate.py`) run in-process on an
oracle model: the reference side of benchmarks/eval_speed.py.

The pip package ships the loop but not its EvalModel (the released one loads from a model hub),
so `ReferenceEvalModel` implements the loop's model interface (`BaseEvalModel`) as the spec
describes it (section 5): images through the CLIP eval transform, stacked (B, T, 1, C, H, W) with
zeros for missing ones; text left-padded; `Flamingo.generate` with HF beam search; the new tokens
decoded with special tokens skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys

import open_flamingo
import torch

from flamingo_jax.evaluate import prompts

_EVAL = os.path.join(os.path.dirname(open_flamingo.__file__), "eval")


def _reference_eval_modules():
  """open_flamingo's eval package imports its siblings by bare name (`import utils`)."""
  if _EVAL not in sys.path:
    sys.path.insert(0, _EVAL)
  import eval_model  # pylint: disable=g-import-not-at-top
  import evaluate  # pylint: disable=g-import-not-at-top
  return eval_model, evaluate


class ReferenceEvalModel(_reference_eval_modules()[0].BaseEvalModel):
  """The reference loop's model: an in-process torch Flamingo, its tokenizer, CLIP's transform."""

  def __init__(self, model, tokenizer, image_size: int, device: str = "cpu"):  # pylint: disable=super-init-not-called
    from open_clip.transform import image_transform  # pylint: disable=g-import-not-at-top
    self.model, self.tokenizer, self.device, self.lm_name = model.eval(), tokenizer, device, "oracle"
    self.tokenizer.padding_side = "left"
    self.image_processor = image_transform(image_size, is_train=False)

  def _images(self, batch_images) -> torch.Tensor:
    most = max(len(x) for x in batch_images)
    out = None
    for i, images in enumerate(batch_images):
      for j, image in enumerate(images):
        pixels = self.image_processor(image)
        if out is None:
          out = torch.zeros((len(batch_images), most, 1, *pixels.shape))
        out[i, j, 0] = pixels
    return out.to(self.device)

  def _context(self, batch_text):
    """Left-padded ids and mask as the released model makes them. Where no row is padded, one
    pad column more: transformers 5 drops an all-ones mask, which open_flamingo's layers need (a
    masked pad changes no generation or uncached score; a cached class score attends to it)."""
    text = self.tokenizer(batch_text, padding="longest", truncation=True, max_length=2000, return_tensors="pt")
    ids, mask = text["input_ids"], text["attention_mask"]
    if bool(mask.all()):
      pad = torch.full((ids.shape[0], 1), self.tokenizer.pad_token_id, dtype=ids.dtype)
      ids, mask = torch.cat([pad, ids], 1), torch.cat([torch.zeros_like(pad), mask], 1)
    return ids.to(self.device), mask.to(self.device)

  def get_outputs(self, batch_text, batch_images, min_generation_length, max_generation_length,
                  num_beams, length_penalty):
    ids, mask = self._context(batch_text)
    with torch.inference_mode():
      out = self.model.generate(self._images(batch_images), ids, attention_mask=mask,
                                min_new_tokens=min_generation_length, max_new_tokens=max_generation_length,
                                num_beams=num_beams, length_penalty=length_penalty)
    return self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)

  # The templates: ours, which the prompt tests hold equal to the reference's.
  def get_vqa_prompt(self, question, answer=None) -> str:
    return prompts.vqa_prompt(question, answer)

  def get_caption_prompt(self, caption=None) -> str:
    return prompts.caption_prompt(caption)


@contextlib.contextmanager
def single_process_group():
  """The reference loop shards its test set with torch.distributed: a one-process gloo group."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
  try:
    yield
  finally:
    torch.distributed.destroy_process_group()


def evaluate_vqa(model: ReferenceEvalModel, data: dict, shots: int, queries: int, query_set_size: int,
                 workdir: str, seed: int = 42) -> float:
  """open_flamingo's `evaluate_vqa` on VQAv2-format files (`data`: oracle/eval_fixtures.write_vqa's
  paths), its defaults (3 beams, up to 5 new tokens): the accuracy. It writes (then deletes) a
  results file in the working directory, so it runs in `workdir`."""
  _, evaluate = _reference_eval_modules()
  args = argparse.Namespace(
      model="open_flamingo", batch_size=8, num_samples=queries, query_set_size=query_set_size,
      rices=False, rank=0, world_size=1,
      vqav2_train_image_dir_path=data["train_image_dir"], vqav2_train_questions_json_path=data["train_questions"],
      vqav2_train_annotations_json_path=data["train_annotations"],
      vqav2_test_image_dir_path=data["test_image_dir"], vqav2_test_questions_json_path=data["test_questions"],
      vqav2_test_annotations_json_path=data["test_annotations"])
  here = os.getcwd()
  os.chdir(workdir)
  try:
    return evaluate.evaluate_vqa(args, model, seed=seed, num_shots=shots, dataset_name="vqav2")
  finally:
    os.chdir(here)
