"""LAION image-caption pairs -> fixed-shape samples (spec 4.2, "LAION").

Text: `<image>{caption.strip()}<|endofchunk|>{eos}`, truncated to `max_tokens` (the cap includes
the special tokens, so a long caption loses its eoc and EOS, as in the reference) and right-padded.
The reference flips a whole batch at once; that is `flip_batch`, applied after batching.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from flamingo_jax.data import image_preprocess, labels
from flamingo_jax.data.skips import Skip
from flamingo_jax.data.text import TextEncoder
from flamingo_jax.data.tokenizer import EOC_TOKEN, MEDIA_TOKEN

IMAGE_EXTS = ("jpg", "png", "jpeg")  # the reference's `to_tuple("jpg;png;jpeg", ...)` preference


def caption_text(caption: str, eos_token: str) -> str:
  """The LAION training string for one caption."""
  return f"{MEDIA_TOKEN}{caption.strip()}{EOC_TOKEN}{eos_token}"


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `preprocess` needs of the config (a plain record: it travels to worker processes)."""
  image_size: int
  max_tokens: int
  media_id: int

  @classmethod
  def from_config(cls, block: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict,
                  special: dict[str, int]) -> "Settings":
    """From a dataset's `data.<name>` block, the `data` config and the tokenizer's special ids."""
    return cls(int(data_cfg.image_size), int(block.max_tokens), int(special["media"]))


def preprocess(record: dict, encoder: TextEncoder, settings: Settings) -> dict | Skip:
  """A `{key}.jpg|png|jpeg` + `{key}.txt` record -> one sample of the batch contract, or `Skip`.

  Unlike the reference, an empty caption is skipped ("empty_text") rather than trained on.
  """
  image_size, max_tokens, media_id = settings.image_size, settings.max_tokens, settings.media_id
  if "__error__" in record:
    return Skip(record["__error__"])
  image_key = next((k for k in IMAGE_EXTS if k in record), None)
  if image_key is None or "txt" not in record:
    return Skip("missing_field")
  caption = record["txt"].decode("utf-8", errors="replace")
  if not caption.strip():
    return Skip("empty_text")
  try:
    pixels = image_preprocess.clip_resize(image_preprocess.decode(record[image_key]), image_size)
  except Exception:  # PIL raises many types on corrupt data  # pylint: disable=broad-except
    return Skip("undecodable_image")
  ids, mask = encoder.encode(caption_text(caption, encoder.eos_token), max_tokens)
  return {"images": pixels[None, None], "image_mask": np.ones((1,), bool), "input_ids": ids,
          "attention_mask": mask, "labels": labels.laion_labels(ids, encoder.pad_id, media_id)}


def flip_batch(batch: dict, rng: np.random.Generator) -> dict:
  """With probability 0.5, mirrors every image of the batch (one draw per batch, as the reference)."""
  if rng.random() < 0.5:
    batch = dict(batch, images=image_preprocess.hflip(batch["images"]))
  return batch
