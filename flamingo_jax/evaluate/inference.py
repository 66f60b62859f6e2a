"""The model as the evaluation calls it: prompts in, generated text or class scores out.

Batches are padded to a multiple of the devices on the mesh's batch axes (data x fsdp) and their
images are sharded over those devices; on several hosts every host builds the same global batch
of token ids (cheap) and loads only the images of the rows its devices hold.

Text as OpenFlamingo prepares it: the tokenizer's default special tokens, truncation to 2000
tokens, left padding, here to a multiple of `pad_multiple` so that few shapes are compiled.
Images: one (S, S, 3) CLIP-normalised array per `<image>`, zeros in unused trailing slots.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from flamingo_jax.data import image_preprocess, tokenizer as tok_lib
from flamingo_jax.generate import DecodeSettings, Sampler
from flamingo_jax.models import rules


class ImageLoader:
  """Path -> CLIP-preprocessed float32 (S, S, 3), with an LRU cache (demonstrations repeat)."""

  def __init__(self, image_size: int, cache_size: int = 1024, workers: int = 8):
    self.image_size = image_size
    self._load = functools.lru_cache(maxsize=cache_size)(self._read)
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))

  def _read(self, path: str) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(path) as img:
      return image_preprocess.clip_preprocess(img.convert("RGB"), self.image_size)

  def load(self, path: str) -> np.ndarray:
    return self._load(path)

  def load_many(self, paths: Sequence[str]) -> list[np.ndarray]:
    return list(self._pool.map(self._load, paths))


# The reference decoded with transformers 4.2x-4.3x, whose `decode` removed these spaces by
# default (clean_up_tokenization_spaces=True); transformers 5 no longer does for BPE tokenizers.
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def clean_up_spaces(text: str) -> str:
  for old, new in _CLEAN_UP:
    text = text.replace(old, new)
  return text


class LatentCache:
  """Image path -> its resampled latents (N, D), least recently used first out: few-shot prompts
  repeat their demonstrations, and an image's latents do not depend on the prompt around it."""

  def __init__(self, size: int):
    self.size = size
    self._items: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self.hits = self.misses = 0  # image slots served from the cache / images encoded

  def get(self, path: str) -> np.ndarray | None:
    value = self._items.get(path)
    if value is not None:
      self._items.move_to_end(path)
    return value

  def put(self, path: str, value: np.ndarray) -> None:
    self._items[path] = value
    self._items.move_to_end(path)
    while len(self._items) > self.size:
      self._items.popitem(last=False)

  def __len__(self) -> int:
    return len(self._items)


def _to_host(x) -> np.ndarray:
  """A (possibly multi-host) global array as one numpy array on every host."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _padding_attendable(state: dict, extra: int) -> dict:
  """A prefilled decode state as the reference continues it (`reference_cached_scores`): every
  slot of the prompt attendable, its left padding included, and `extra` empty slots after it.

  Worked example, a row of 2 pads and 3 tokens, extra=1: key_valid [0 0 1 1 1] -> [1 1 1 1 1 0],
  so the next token attends to the pads' keys too (the reference passes no attention mask)."""
  def grow(x):  # the slot axis is the third from the end: (B, [groups,] slots, heads, head_dim)
    return jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, extra), (0, 0), (0, 0)])
  caches = [{name: grow(x) for name, x in cache.items()} for cache in state["caches"]]
  return dict(state, caches=caches, key_valid=jnp.pad(jnp.ones_like(state["key_valid"]), ((0, 0), (0, extra))))


def _round_up(n: int, multiple: int) -> int:
  return int(math.ceil(n / multiple) * multiple)


class EvalModel:
  """A Flamingo (its Sampler) with its tokenizer, answering batches of interleaved prompts.

  `generate_fn(vision_x, input_ids, attention_mask, settings)` replaces the sampler's generation
  (tests use it to plant known answers)."""

  def __init__(self, sampler: Sampler, tokenizer, *, pad_multiple: int = 64, max_length: int = 2000,
               image_cache_size: int = 1024, image_workers: int = 8, generate_fn: Callable | None = None,
               latent_cache_size: int = 0):
    if sampler.mesh is None:
      raise ValueError("EvalModel needs a Sampler with a mesh")
    self.sampler = sampler
    self.cfg, self.mesh = sampler.cfg, sampler.mesh
    self.tok = tokenizer
    self.pad_multiple, self.max_length = pad_multiple, max_length
    self.images = ImageLoader(self.cfg.vision.image_size, image_cache_size, image_workers)
    ids = tok_lib.special_ids(tokenizer)
    if (ids["eoc"], ids["media"]) != (self.cfg.eoc_token_id, self.cfg.media_token_id):
      raise ValueError(f"Tokenizer ids eoc={ids['eoc']} media={ids['media']} differ from the model "
                       f"config's {self.cfg.eoc_token_id}, {self.cfg.media_token_id}")
    self.eoc_id, self.pad_id = ids["eoc"], ids["pad"]
    self._generate = generate_fn
    # One host: every image is encoded once per run (until evicted). Several hosts would have to
    # encode the same images in step; they encode each prompt's images with it.
    # A model with media-time embeddings encodes an image differently in each slot: no cache.
    cacheable = jax.process_count() == 1 and self.cfg.perceiver.get("max_num_media") is None
    self.latents = LatentCache(latent_cache_size) if latent_cache_size and cacheable else None
    self._batch_sharding = lambda ndim: rules.batch_sharding(self.mesh, ndim)
    self.batch_multiple = sampler.batch_multiple

  @classmethod
  def from_loaded(cls, loaded, eval_cfg: ml_collections.ConfigDict) -> "EvalModel":
    """From `weights.load.load_model`'s result and the evaluation settings."""
    return cls(Sampler.from_loaded(loaded), loaded.tokenizer, pad_multiple=eval_cfg.pad_multiple,
               max_length=eval_cfg.max_length, image_cache_size=eval_cfg.image_cache_size,
               latent_cache_size=eval_cfg.get("latent_cache_size", 0))

  @property
  def variables(self):
    return self.sampler.variables

  # -- inputs --------------------------------------------------------------------------------

  def padded_size(self, n: int) -> int:
    """Rows a batch of n examples is padded to (a multiple of the batch-axis devices)."""
    return _round_up(max(n, 1), self.batch_multiple)

  def tokenize(self, texts: Sequence[str], pad_multiple: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (B, L) ids and mask, L a multiple of `pad_multiple` (default: the model's)."""
    rows = [self.tok(t)["input_ids"][:self.max_length] for t in texts]
    length = _round_up(max(len(r) for r in rows), pad_multiple or self.pad_multiple)
    ids = np.full((len(rows), length), self.pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
      if r:
        ids[i, length - len(r):], mask[i, length - len(r):] = r, 1
    return ids, mask

  def vision_x(self, image_paths: Sequence[Sequence[str]]) -> jax.Array:
    """(B, T, 1, S, S, 3) images sharded over the batch axes; each host reads only its rows."""
    b, t, s = len(image_paths), max(1, max(len(p) for p in image_paths)), self.cfg.vision.image_size
    shape = (b, t, 1, s, s, 3)

    def rows(index):
      sel = range(b)[index[0]]
      out = np.zeros((len(sel), t, 1, s, s, 3), np.float32)
      for i, row in enumerate(sel):
        for j, img in enumerate(self.images.load_many(image_paths[row])):
          out[i, j, 0] = img
      return out[(slice(None),) + tuple(index[1:])]

    return jax.make_array_from_callback(shape, self._batch_sharding(len(shape)), rows)

  def media(self, image_paths: Sequence[Sequence[str]]) -> jax.Array:
    """(B, T, N, D) latents of the images (a blank image's in unused slots), from the latent
    cache; the images it lacks are encoded (in batches) and added to it."""
    cache, found = self.latents, {}
    blank = cache.get("")
    if blank is None:  # the unused slots' latents: those of an all-zero image, as without the cache
      blank = self._encode([[]])[0]
      cache.put("", blank)
    for p in dict.fromkeys(p for row in image_paths for p in row):
      value = cache.get(p)
      if value is not None:
        found[p] = value
    missing = [p for p in dict.fromkeys(p for row in image_paths for p in row) if p not in found]
    cache.hits += sum(len(row) for row in image_paths) - len(missing)  # slots served without encoding
    chunk = self.padded_size(64)
    for start in range(0, len(missing), chunk):
      part = missing[start:start + chunk]
      for p, value in zip(part, self._encode([[p] for p in part])):
        found[p] = value
        cache.put(p, value)
    cache.misses += len(missing)
    b, t = len(image_paths), max(1, max(len(p) for p in image_paths))
    out = np.broadcast_to(blank, (b, t, *blank.shape)).copy()
    for i, row in enumerate(image_paths):
      for j, p in enumerate(row):
        out[i, j] = found[p]
    return jax.make_array_from_callback(out.shape, self._batch_sharding(out.ndim), lambda index: out[index])

  def _encode(self, rows: list[list[str]]) -> list[np.ndarray]:
    """Each row's first image's latents (a blank image's for an empty row), (N, D) each."""
    n = len(rows)
    rows = rows + [rows[-1]] * (self.padded_size(n) - n)
    return list(_to_host(self.sampler.encode_images(self.vision_x(rows)))[:n, 0])

  def _vision_inputs(self, image_paths) -> dict:
    """What the sampler takes for these images: cached latents (`media`) or pixels."""
    if self.latents is not None:
      return {"vision_x": None, "media": self.media(image_paths)}
    return {"vision_x": self.vision_x(image_paths), "media": None}

  def _pad_rows(self, texts, image_paths):
    n = len(texts)
    extra = self.padded_size(n) - n  # padding rows repeat the last example; dropped afterwards
    return list(texts) + [texts[-1]] * extra, list(image_paths) + [image_paths[-1]] * extra

  # -- generation ----------------------------------------------------------------------------

  def generate(self, texts: Sequence[str], image_paths: Sequence[Sequence[str]],
               decoding: DecodeSettings) -> list[str]:
    """Continuations of the prompts, decoded without special tokens (as the reference); they
    stop at <|endofchunk|>."""
    n = len(texts)
    texts, image_paths = self._pad_rows(texts, image_paths)
    ids, mask = self.tokenize(texts)
    settings = dataclasses.replace(decoding, eos_token_ids=(self.eoc_id,), pad_token_id=self.pad_id)
    if self._generate is not None:  # a stand-in, given pixels
      out = self._generate(self.vision_x(image_paths), ids, mask, settings)
    else:
      inputs = self._vision_inputs(image_paths)
      out = self.sampler.generate(inputs["vision_x"], ids, mask, settings, media=inputs["media"])
    new_tokens = np.asarray(out)[:n, ids.shape[1]:]
    texts = self.tok.batch_decode(new_tokens.tolist(), skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)
    return [clean_up_spaces(t) for t in texts]

  # -- classification --------------------------------------------------------------------------

  def class_token_ids(self, class_names: Sequence[str]) -> list[list[int]]:
    """Each class name's tokens, no special tokens and no leading space (as the reference)."""
    out = [self.tok(name, add_special_tokens=False)["input_ids"] for name in class_names]
    empty = [n for n, t in zip(class_names, out) if not t]
    if empty:
      raise ValueError(f"Class names with no tokens: {empty}")
    return out

  def class_scores(self, texts: Sequence[str], image_paths: Sequence[Sequence[str]],
                   class_tokens: Sequence[Sequence[int]], use_cache: bool = True,
                   reference_cache: bool = False) -> np.ndarray:
    """(B, C) mean log-probability of each class's tokens right after each prompt.

    `use_cache`: the context runs once (prefill) and each class continues its KV cache token by
    token; padding stays masked and positions count real tokens only. Otherwise one full forward
    per class over context + class tokens (the reference's `--no_caching_for_classification`).
    `reference_cache` (with `use_cache`): the reference's cached continuation instead, prompts
    padded to the batch's longest and the class tokens attending to that padding too.
    """
    n = len(texts)
    texts, image_paths = self._pad_rows(texts, image_paths)
    ids, mask = self.tokenize(texts, 1 if use_cache and reference_cache else None)
    inputs = self._vision_inputs(image_paths) if use_cache else {"vision_x": self.vision_x(image_paths)}
    sampler = self.sampler
    b, length = ids.shape
    scores = np.zeros((b, len(class_tokens)), np.float32)
    if use_cache:
      max_m = max(len(t) for t in class_tokens)
      if reference_cache:  # the prompt's slots only, then the padding made attendable
        logits, state = sampler.prefill(inputs["vision_x"], ids, mask, length, media=inputs["media"],
                                        forward_positions=True)
        state = _padding_attendable(state, max_m - 1)
      else:
        logits, state = sampler.prefill(inputs["vision_x"], ids, mask, length + max_m - 1, media=inputs["media"])
      first = jax.nn.log_softmax(logits.astype(jnp.float32))
      single = [c for c, t in enumerate(class_tokens) if len(t) == 1]
      if single:
        scores[:, single] = _to_host(first[:, np.asarray([class_tokens[c][0] for c in single])])
      for c, toks in enumerate(class_tokens):
        if len(toks) > 1:
          scores[:, c] = _to_host(sampler.continuation_log_prob(
              state, first, np.tile(np.asarray(toks, np.int32), (b, 1))))
    else:
      for c, toks in enumerate(class_tokens):
        m = len(toks)
        full_ids = np.concatenate([ids, np.tile(np.asarray(toks, np.int32), (b, 1))], axis=1)
        full_mask = np.concatenate([mask, np.ones((b, m), np.int32)], axis=1)
        scores[:, c] = _to_host(sampler.full_forward_log_prob(inputs["vision_x"], full_ids, full_mask, m))
    return scores[:n]

  # -- RICES ---------------------------------------------------------------------------------

  def embed_images(self, paths: Sequence[str], batch_size: int = 64, progress=None) -> np.ndarray:
    """(N, E) normalised CLIP embeddings of image files, batch by batch."""
    out = []
    batch_size = self.padded_size(batch_size)
    for start in range(0, len(paths), batch_size):
      chunk = list(paths[start:start + batch_size])
      padded = chunk + [chunk[-1]] * (self.padded_size(len(chunk)) - len(chunk))
      images = self.vision_x([[p] for p in padded])[:, 0, 0]
      out.append(_to_host(self.sampler.embed_images(images))[:len(chunk)])
      if progress is not None:
        progress(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, self.cfg.vision.embed_dim), np.float32)
