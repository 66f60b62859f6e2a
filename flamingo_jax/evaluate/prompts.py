"""Prompt templates, decoding presets and output post-processing, as OpenFlamingo evaluates;
each task's record (catalog.py) names its own.

A prompt is the demonstrations followed by the query; its images are the demonstrations' images
followed by the query image, one per `<image>`. Captioning and VQA put "\n" after every
demonstration, classification nothing. There is no space after the colons.

Zero-shot (Flamingo's trick): two demonstrations are kept as text only, every `<image>` removed
from them and their images dropped.
"""
from __future__ import annotations

import re

from flamingo_jax.evaluate.metrics import vqa
from flamingo_jax.generate.search import DecodeSettings

MEDIA, EOC = "<image>", "<|endofchunk|>"
ZERO_SHOT_DEMOS = 2


def eval_decoding(max_new_tokens: int) -> DecodeSettings:
  """Beam search as OpenFlamingo's evaluation calls `generate`: 3 beams, length_penalty 0.0
  (summed log-probs, no length normalisation); the model adds its <|endofchunk|> as EOS."""
  return DecodeSettings(num_beams=3, max_new_tokens=max_new_tokens, length_penalty=0.0)


# -- Templates ---------------------------------------------------------------------------------

def _chunk(text: str, answer: str | None) -> str:
  return f"{MEDIA}{text}" if answer is None else f"{MEDIA}{text}{answer}{EOC}"


def caption_prompt(caption: str | None = None) -> str:
  return _chunk("Output:", None if caption is None else caption.strip())


def vqa_prompt(question: str, answer: str | None = None) -> str:
  return _chunk(f"Question:{question} Short answer:", answer)


def imagenet_prompt(class_name: str | None = None) -> str:
  return _chunk("Output:", class_name)


def hateful_memes_prompt(text: str, class_name: str | None = None) -> str:
  return _chunk(f"is an image with: '{text}' written on it. Is it hateful? Answer:", class_name)


# One example's chunk, with its answer (a demonstration) or without (the query): a task's template.

def caption_chunk(example, class_names=(), with_answer: bool = True) -> str:
  return caption_prompt(example.caption if with_answer else None)


def vqa_chunk(example, class_names=(), with_answer: bool = True) -> str:
  return vqa_prompt(example.question, example.answers[0]["answer"] if with_answer else None)


def hateful_memes_chunk(example, class_names=(), with_answer: bool = True) -> str:
  return hateful_memes_prompt(example.text, class_names[example.label] if with_answer else None)


def imagenet_chunk(example, class_names=(), with_answer: bool = True) -> str:
  return imagenet_prompt(class_names[example.label] if with_answer else None)


def build_prompt(task, demos: list, query, num_shots: int, class_names=()) -> str:
  """Demonstrations then the query, each chunk from `task.template` (a catalog.Task); zero-shot
  demonstrations lose their `<image>` tokens."""
  sep = "" if task.kind == "classification" else "\n"
  context = "".join(task.template(d, class_names) + sep for d in demos)
  if num_shots == 0:
    context = context.replace(MEDIA, "")
  return context + task.template(query, class_names, with_answer=False)


def prompt_images(task, demos: list, query, num_shots: int,
                  reference_zero_shot_images: bool = False) -> list[str]:
  """Image paths in `<image>` order. With `reference_zero_shot_images`, zero-shot classification
  keeps its two demonstration images as the reference does (its bug): the query's only `<image>`
  then attends to the first demonstration image instead of the query image."""
  keep_demos = num_shots > 0 or (reference_zero_shot_images and task.kind == "classification")
  return [d.image_path for d in demos if keep_demos] + [query.image_path]


# -- Post-processing ---------------------------------------------------------------------------

def postprocess_caption(generation: str) -> str:
  """Text before the first "Output", without double quotes (no strip), as the reference."""
  return generation.split("Output", 1)[0].replace('"', "")


def postprocess_vqa(generation: str) -> str:
  return vqa.postprocess_vqa(generation)


def postprocess_ok_vqa(generation: str) -> str:
  """VQA's post-processing, then OK-VQA's answer stemming (NLTK, loaded on first use)."""
  from flamingo_jax.evaluate.metrics import okvqa  # pylint: disable=g-import-not-at-top
  return okvqa.postprocess_ok_vqa(generation)


def effective_shots(num_shots: int) -> int:
  """Demonstrations drawn for a shot count: zero-shot still draws two (text only)."""
  return num_shots if num_shots > 0 else ZERO_SHOT_DEMOS


def num_media_tokens(text: str) -> int:
  return len(re.findall(re.escape(MEDIA), text))
