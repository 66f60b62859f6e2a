"""MMC4 interleaved documents -> fixed-shape samples (spec 4.2, "MMC4", steps 1-7), and the
ChatGPT-generated sequences of the 4B recipe, which come in the same shards (`is_gpt` documents).

The text is built exactly as the reference builds it. One deliberate difference: the reference
keeps its image tensor in image-index order while `<image>` tokens follow sentence order, so the
k-th `<image>` can attend to another picture than the one matched to it. Here the same images are
kept, but ordered like their `<image>` tokens. Images whose `<image>` was truncated away are
zeroed and masked out (the model never attends to them in either implementation).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re

import ml_collections
import numpy as np
from scipy import optimize

from flamingo_jax.data import image_preprocess, labels
from flamingo_jax.data.skips import Skip
from flamingo_jax.data.text import TextEncoder
from flamingo_jax.data.tokenizer import EOC_TOKEN, MEDIA_TOKEN

MATCHINGS = ("argmax", "one_to_one")
GPT_MARKER = re.compile(r"_!_IMAGE\d+_!_")  # ChatGPT sequences: `_!_IMAGE3_!_` stands for an image


def match_images(sim: np.ndarray, matching: str) -> np.ndarray:
  """float[images, sentences] -> the sentence index of each image, -1 for none.

  'argmax' (OpenFlamingo <= 2.0.1, the released models) lets several images share a sentence;
  'one_to_one' (OpenFlamingo main) is a maximum-similarity assignment.
  """
  if matching == "argmax":
    return sim.argmax(axis=1) if sim.shape[1] else np.full(sim.shape[0], -1)
  if matching == "one_to_one":
    rows, cols = optimize.linear_sum_assignment(-sim)
    out = np.full(sim.shape[0], -1)
    out[rows] = cols
    return out
  raise ValueError(f"mmc4 matching must be one of {MATCHINGS}, got {matching!r}")


def _tidy(text: str) -> str:
  """Drops the first eoc and the spaces around the special tokens, as the reference does."""
  text = text.replace(EOC_TOKEN, "", 1)
  return (text.replace(f" {EOC_TOKEN}", EOC_TOKEN).replace(f"{MEDIA_TOKEN} ", MEDIA_TOKEN)
          .replace(f" {MEDIA_TOKEN}", MEDIA_TOKEN))


def build_text(sentences: list[str], sentence_ixs: list[int], eos_token: str) -> str:
  """Prefixes each matched sentence with `<|endofchunk|><image>` (in image order, so images sharing
  a sentence stack up in reverse), joins with spaces, drops the first eoc, tidies the spaces
  around the special tokens and appends `<|endofchunk|>{eos}`."""
  sentences = list(sentences)
  for ix in sentence_ixs:
    sentences[ix] = f"{EOC_TOKEN}{MEDIA_TOKEN}{sentences[ix]}"
  return f"{_tidy(' '.join(sentences))}{EOC_TOKEN}{eos_token}"


def build_gpt_text(example: str, max_images: int, eos_token: str) -> tuple[str, list[str]]:
  """A ChatGPT sequence -> (training text, the image markers its `<image>` tokens stand for).

  Each marker becomes `<|endofchunk|><image>`, then as for MMC4 the first eoc goes, the spaces
  are tidied and `<|endofchunk|>{eos}` appended. With more than `max_images` markers the text
  ends before the chunk of image `max_images + 1`; the reference cuts at the `max_images`-th
  `<image>` instead, which leaves one image fewer in the text than it keeps (spec 4.2).
  """
  markers = GPT_MARKER.findall(example)
  text = _tidy(GPT_MARKER.sub(f"{EOC_TOKEN}{MEDIA_TOKEN}", example))
  if len(markers) > max_images:
    cut = [m.start() for m in re.finditer(re.escape(MEDIA_TOKEN), text)][max_images]
    text = text[:cut].removesuffix(EOC_TOKEN)
    markers = markers[:max_images]
  return f"{text}{EOC_TOKEN}{eos_token}", markers


def token_order(sentence_ixs: list[int]) -> list[int]:
  """Positions in `sentence_ixs` in the order their `<image>` tokens appear in `build_text`."""
  return sorted(range(len(sentence_ixs)), key=lambda k: (sentence_ixs[k], -k))


def _parse(record: dict) -> tuple[list[str], list[dict], np.ndarray] | dict | Skip:
  """An MMC4 document's (sentences, image infos, similarity matrix), or a ChatGPT document."""
  if "__error__" in record:
    return Skip(record["__error__"])
  if "json" not in record:
    return Skip("missing_field")
  try:
    doc = json.loads(record["json"])
  except (ValueError, UnicodeDecodeError):
    return Skip("bad_json")
  if not isinstance(doc, dict):
    return Skip("bad_json")
  if "is_gpt" in doc:
    return doc
  try:
    sentences, infos = [str(s) for s in doc["text_list"]], list(doc["image_info"])
    sim = doc["similarity_matrix"]
  except (KeyError, TypeError):
    return Skip("missing_field")
  try:
    sim = np.asarray(sim, np.float64).reshape(len(infos), len(sentences))
  except (TypeError, ValueError):
    return Skip("bad_similarity_matrix")  # not images x sentences
  return sentences, infos, sim


def _image_bytes(info: dict, min_image_bytes: int) -> bytes | None:
  """Raw bytes of a candidate image, or None if it has none or is too small (the reference's
  `len(bytes) // 1000 <= 10` filter is `min_image_bytes=11_000`)."""
  if not isinstance(info, dict) or "image_base64" not in info:
    return None
  data = base64.b64decode(info["image_base64"])
  return data if len(data) >= min_image_bytes else None


def select_images(sentences, infos, sim, *, sim_threshold: float, max_images: int,
                  min_image_bytes: int, matching: str) -> tuple[list[bytes], list[int]] | Skip:
  """-> (image bytes, sentence index per image) kept, in image-index order, at most `max_images`."""
  try:
    candidates = [(i, _image_bytes(info, min_image_bytes)) for i, info in enumerate(infos)]
  except (binascii.Error, ValueError):
    return Skip("undecodable_image")
  candidates = [(i, data) for i, data in candidates if data is not None]
  if not candidates:
    return Skip("no_valid_image")
  valid_sim = sim[[i for i, _ in candidates]]
  sentence_of = match_images(valid_sim, matching)
  kept = [k for k, s in enumerate(sentence_of) if s >= 0 and valid_sim[k, s] >= sim_threshold]
  if not kept:
    return Skip("below_similarity_threshold")
  kept = kept[:max_images]
  return [candidates[k][1] for k in kept], [int(sentence_of[k]) for k in kept]


def _gpt_images(doc: dict, max_images: int, eos_token: str) -> tuple[str, list[bytes]] | Skip:
  """A ChatGPT document's text and the bytes of the image behind each of its `<image>` tokens."""
  try:
    text, markers = build_gpt_text(str(doc["example"]), max_images, eos_token)
    raw = [base64.b64decode(doc["image_map"][m]["base64_image"]) for m in markers]
  except (KeyError, TypeError):
    return Skip("missing_field")
  except (binascii.Error, ValueError):
    return Skip("undecodable_image")
  return text, raw


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `preprocess` needs of the config (a plain record: it travels to worker processes)."""
  image_size: int
  max_tokens: int
  max_images: int
  sim_threshold: float
  min_images: int
  min_image_bytes: int
  matching: str
  random_flip: bool
  media_id: int
  eoc_id: int

  def __post_init__(self):
    match_images(np.zeros((1, 1)), self.matching)  # a bad name fails here, not in a worker

  @classmethod
  def from_config(cls, block: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
                  special: dict[str, int]) -> "Settings":
    """From a dataset's `data.<name>` block, the `data` config and the tokenizer's special ids."""
    return cls(int(data_cfg.image_size), int(block.max_tokens), int(block.max_images),
               float(block.sim_threshold), int(block.min_images), int(block.min_image_bytes),
               str(block.matching), bool(data_cfg.random_flip), int(special["media"]), int(special["eoc"]))


def preprocess(record: dict, encoder: TextEncoder, rng: np.random.Generator, settings: Settings) -> dict | Skip:
  """A `{key}.json` MMC4 or ChatGPT record -> one sample of the batch contract, or `Skip(reason)`.

  The images are stored in the order of their `<image>` tokens; those whose token was truncated
  away are zeroed and masked out.
  """
  s = settings
  parsed = _parse(record)
  if isinstance(parsed, Skip):
    return parsed
  is_gpt = isinstance(parsed, dict)
  if is_gpt:  # the image of each marker, in text order; no similarity filter, no single-image drop
    selected = _gpt_images(parsed, s.max_images, encoder.eos_token)
    if isinstance(selected, Skip):
      return selected
    text, raw = selected
    order = list(range(len(raw)))
  else:
    sentences, infos, sim = parsed
    selected = select_images(sentences, infos, sim, sim_threshold=s.sim_threshold, max_images=s.max_images,
                             min_image_bytes=s.min_image_bytes, matching=s.matching)
    if isinstance(selected, Skip):
      return selected
    raw, sentence_ixs = selected
    text, order = build_text(sentences, sentence_ixs, encoder.eos_token), token_order(sentence_ixs)
  if not raw:
    return Skip("too_few_images")
  try:
    pixels = np.stack([image_preprocess.clip_resize(image_preprocess.decode(b), s.image_size)
                       for b in raw])
  except Exception:  # PIL raises many types; the reference drops the document  # pylint: disable=broad-except
    return Skip("undecodable_image")
  if s.random_flip and rng.random() < 0.5:  # one draw for all images of the document, as there
    pixels = image_preprocess.hflip(pixels)
  ids, mask = encoder.encode(text, s.max_tokens)
  n_media = int((ids == s.media_id).sum())
  if n_media < s.min_images:
    return Skip("too_few_images")
  if not is_gpt and n_media == 1 and rng.random() <= 0.5:
    return Skip("single_image_dropped")  # the reference keeps half of the single-image documents
  if not is_gpt and n_media == 1 and ids[-1] == s.media_id:
    return Skip("image_at_end")  # all labels would be ignored
  images = np.zeros((s.max_images, 1, s.image_size, s.image_size, 3), np.uint8)
  shown = order[:n_media]
  images[:len(shown), 0] = pixels[shown]
  return {"images": images, "image_mask": np.arange(s.max_images) < len(shown), "input_ids": ids,
          "attention_mask": mask, "labels": labels.mmc4_labels(ids[None], encoder.pad_id, s.media_id, s.eoc_id)[0]}
