"""Per-sample preprocessing of LAION pairs and MMC4 documents into fixed-shape arrays.

Each function returns a dict of numpy arrays, or `Skip(reason)` for a sample to drop; the
pipeline counts skips by reason. Text follows OpenFlamingo's recipes (see the spec, §4.2-4.3).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import random
from typing import Any

import numpy as np
from scipy import optimize

from flamingo_jax.data import image_preprocess, labels
from flamingo_jax.data.tokenizer import EOC_TOKEN, MEDIA_TOKEN


@dataclasses.dataclass(frozen=True)
class Skip:
  """A sample that is dropped, and why (counted, never silent)."""
  reason: str


IMAGE_EXTS = ("jpg", "jpeg", "png")


def _tokenize(tok, text: str, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """Truncate and right-pad to `max_tokens` here rather than through the tokenizer's own
  truncation/padding settings, which are shared state that Grain's reader threads would race on."""
  ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
  out = np.full((max_tokens,), tok.pad_token_id, np.int32)
  out[:len(ids)] = ids
  return out, (np.arange(max_tokens) < len(ids)).astype(np.int32)


def laion(record: dict, tok, *, image_size: int, max_tokens: int, media_id: int) -> dict | Skip:
  """`<image>caption<|endofchunk|>EOS`, right-padded to `max_tokens` (the cap includes the special
  tokens, so a long caption loses its eoc/EOS as in the reference)."""
  if "__error__" in record:
    return Skip(record["__error__"])
  image_key = next((k for k in IMAGE_EXTS if k in record), None)
  if image_key is None or "txt" not in record:
    return Skip("missing_field")
  caption = record["txt"].decode("utf-8", errors="replace").strip()
  if not caption:
    return Skip("empty_text")
  try:
    pixels = image_preprocess.clip_preprocess(image_preprocess.decode(record[image_key]), image_size)
  except Exception:  # PIL raises many types on corrupt data
    return Skip("undecodable_image")
  ids, mask = _tokenize(tok, f"{MEDIA_TOKEN}{caption}{EOC_TOKEN}{tok.eos_token}", max_tokens)
  return {"images": pixels[None, None], "image_mask": np.ones((1,), bool), "input_ids": ids,
          "attention_mask": mask, "labels": labels.laion_labels(ids[None], mask[None], media_id)[0]}


def _match_images(sim: np.ndarray, matching: str) -> np.ndarray:
  """Sentence index for each image: per-image argmax (released models) or one-to-one."""
  if matching == "argmax":
    return sim.argmax(axis=1)
  if matching == "one_to_one":
    rows, cols = optimize.linear_sum_assignment(-sim)
    out = np.full(sim.shape[0], -1)
    out[rows] = cols
    return out
  raise ValueError(f"mmc4 matching must be 'argmax' or 'one_to_one', got {matching!r}")


def mmc4(record: dict, tok, *, image_size: int, max_tokens: int, max_images: int, sim_threshold: float,
         min_images: int, min_image_bytes: int, matching: str, media_id: int, seed: Any) -> dict | Skip:
  """An interleaved document -> `<image>`-prefixed sentences, images in `<image>` order."""
  if "__error__" in record:
    return Skip(record["__error__"])
  if "json" not in record:
    return Skip("missing_field")
  try:
    doc = json.loads(record["json"])
    sentences, infos = list(doc["text_list"]), list(doc["image_info"])
    sim_full = np.asarray(doc["similarity_matrix"], np.float64)
  except (ValueError, KeyError, TypeError):
    return Skip("missing_field")
  valid, pixels = [], []
  for i, info in enumerate(infos):
    raw = info.get("image_base64")
    if raw is None:
      continue
    data = base64.b64decode(raw)
    if len(data) < min_image_bytes:  # the reference drops images under ~11 KB
      continue
    try:
      pixels.append(image_preprocess.clip_preprocess(image_preprocess.decode(data), image_size))
    except Exception:
      continue
    valid.append(i)
  if not valid:
    return Skip("no_valid_image")
  sim = sim_full[valid]
  sentence_of = _match_images(sim, matching)
  keep = [k for k in range(len(valid)) if sentence_of[k] >= 0 and sim[k, sentence_of[k]] >= sim_threshold]
  if not keep:
    return Skip("below_similarity_threshold")
  # Unlike the reference, order images by their sentence so the k-th <image> is the k-th image.
  keep = sorted(keep, key=lambda k: (sentence_of[k], k))[:max_images]
  text = list(sentences)
  for k in keep:
    text[sentence_of[k]] = f"{EOC_TOKEN}{MEDIA_TOKEN}{text[sentence_of[k]]}"
  joined = " ".join(text).replace(EOC_TOKEN, "", 1)
  joined = joined.replace(f" {EOC_TOKEN}", EOC_TOKEN).replace(f"{MEDIA_TOKEN} ", MEDIA_TOKEN)
  joined = joined.replace(f" {MEDIA_TOKEN}", MEDIA_TOKEN) + f"{EOC_TOKEN}{tok.eos_token}"
  ids, mask = _tokenize(tok, joined, max_tokens)
  n_media = int((ids == media_id).sum())
  if n_media < min_images:
    return Skip("too_few_images_after_truncation")
  if n_media == 1 and random.Random(repr(seed)).random() <= 0.5:
    return Skip("single_image_dropped")
  if n_media == 1 and ids[mask.astype(bool)][-1] == media_id:
    return Skip("image_at_last_position")
  images = np.zeros((max_images, 1, image_size, image_size, 3), np.float32)
  # Images whose <image> token was truncated away are dropped too (never attended anyway).
  for slot, k in enumerate(keep[:n_media]):
    images[slot, 0] = pixels[k]
  image_mask = np.arange(max_images) < min(n_media, len(keep))
  eoc_id = tok(EOC_TOKEN, add_special_tokens=False)["input_ids"][-1]
  return {"images": images, "image_mask": image_mask, "input_ids": ids, "attention_mask": mask,
          "labels": labels.mmc4_labels(ids[None], mask[None], media_id, eoc_id)[0]}
