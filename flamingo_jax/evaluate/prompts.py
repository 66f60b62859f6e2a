"""Per-task prompts, decoding settings and output post-processing, as OpenFlamingo evaluates.

A prompt is the demonstrations followed by the query; its images are the demonstrations' images
followed by the query image, one per `<image>`. Captioning and VQA put "\n" after every
demonstration, classification nothing. There is no space after the colons.

Zero-shot (Flamingo's trick): two demonstrations are kept as text only, every `<image>` removed
from them and their images dropped.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

from flamingo_jax.evaluate.metrics import vqa
from flamingo_jax.generate.search import DecodeSettings

MEDIA, EOC = "<image>", "<|endofchunk|>"
ZERO_SHOT_DEMOS = 2


def eval_decoding(max_new_tokens: int) -> DecodeSettings:
  """Beam search as OpenFlamingo's evaluation calls `generate`: 3 beams, length_penalty 0.0
  (summed log-probs, no length normalisation); the model adds its <|endofchunk|> as EOS."""
  return DecodeSettings(num_beams=3, max_new_tokens=max_new_tokens, length_penalty=0.0)


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  kind: str                  # "captioning" | "vqa" | "classification"
  metric: str                # what the number is, for reports
  decoding: DecodeSettings | None  # None for classification (scored by log-likelihood)
  rices_name: str            # the reference's cached-feature file stem


TASKS = {
    "coco": Task("coco", "captioning", "CIDEr", eval_decoding(max_new_tokens=20), "coco"),
    "flickr30": Task("flickr30", "captioning", "CIDEr", eval_decoding(max_new_tokens=20), "flickr30"),
    "vqav2": Task("vqav2", "vqa", "VQA accuracy", eval_decoding(max_new_tokens=5), "vqav2"),
    "ok_vqa": Task("ok_vqa", "vqa", "VQA accuracy", eval_decoding(max_new_tokens=5), "ok_vqa"),
    "vizwiz": Task("vizwiz", "vqa", "VQA accuracy", eval_decoding(max_new_tokens=5), "vizwiz"),
    "textvqa": Task("textvqa", "vqa", "VQA accuracy", eval_decoding(max_new_tokens=10), "textvqa"),
    "hateful_memes": Task("hateful_memes", "classification", "ROC AUC x 100", None, "hateful_memes"),
    "imagenet": Task("imagenet", "classification", "top-1 accuracy (%)", None, "imagenet"),
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}; known: {', '.join(TASKS)}")
  return TASKS[name]


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


def example_prompt(task: Task, example, class_names=(), with_answer: bool = True) -> str:
  """The prompt chunk of one example, with its answer (a demonstration) or without (the query)."""
  if task.kind == "captioning":
    return caption_prompt(example.caption if with_answer else None)
  if task.kind == "vqa":
    return vqa_prompt(example.question, example.answers[0]["answer"] if with_answer else None)
  name = class_names[example.label] if with_answer else None
  if task.name == "hateful_memes":
    return hateful_memes_prompt(example.text, name)
  return imagenet_prompt(name)


def build_prompt(task: Task, demos: list, query, num_shots: int, class_names=()) -> str:
  """Demonstrations then the query; zero-shot demonstrations lose their `<image>` tokens."""
  sep = "" if task.kind == "classification" else "\n"
  context = "".join(example_prompt(task, d, class_names) + sep for d in demos)
  if num_shots == 0:
    context = context.replace(MEDIA, "")
  return context + example_prompt(task, query, class_names, with_answer=False)


def prompt_images(task: Task, demos: list, query, num_shots: int,
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


def postprocessor(task: Task) -> Callable[[str], str]:
  if task.kind == "captioning":
    return postprocess_caption
  if task.name == "ok_vqa":
    from flamingo_jax.evaluate.metrics import okvqa  # pylint: disable=g-import-not-at-top
    return okvqa.postprocess_ok_vqa
  if task.kind == "vqa":
    return vqa.postprocess_vqa
  raise ValueError(f"{task.name} is scored by likelihood, not generation")


def effective_shots(num_shots: int) -> int:
  """Demonstrations drawn for a shot count: zero-shot still draws two (text only)."""
  return num_shots if num_shots > 0 else ZERO_SHOT_DEMOS


def num_media_tokens(text: str) -> int:
  return len(re.findall(re.escape(MEDIA), text))
