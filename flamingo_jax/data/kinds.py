"""The kinds of training data, one record each: everything the pipeline, the step, validation and
the planner need to know about a kind lives here (its config fields, image slots, preprocessing,
random draws, batch flips), as `models/families.py` does for LM families.

A training config names its datasets in `data.mixture` ("laion,mmc4"); each name has a block
`data.<name>` that names its kind. Any number of datasets of any kinds, in the mixture's order:

  c.data.my_pairs = kinds.dataset("pairs", shards="/data/mine/{000..015}.tar", batch_size=32,
                                  max_tokens=32, loss_weight=0.5)
  c.data.mixture = "laion,mmc4,my_pairs"

Adding a kind is one `Kind` record in `KINDS` plus its preprocessing module (like `laion.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

from flamingo_jax.data import laion, mmc4

# Every dataset block has these fields (the kind's own follow): what it reads, how much per step,
# how long its rows are, how many images its vision tower runs on, and its weight in the loss.
# image_buffer: 0 derived from the data, -1 every slot (as OpenFlamingo), N that many real images
# (flamingo_jax/train/image_buffers.py).
COMMON_FIELDS = dict(kind="", shards="", validation_shards="", batch_size=1, max_tokens=32,
                     image_buffer=0, loss_weight=1.0)
# The least valid value of the common fields (a row needs <image>, a token of text and
# <|endofchunk|>).
COMMON_MINIMA = dict(batch_size=1, max_tokens=3, loss_weight=0)


@dataclasses.dataclass(frozen=True)
class Kind:
  """One kind of training data."""
  name: str
  description: str
  fields: Mapping[str, Any]          # its own fields of a `data.<name>` block, with their defaults
  image_slots: Callable[[ml_collections.ConfigDict], int]  # image slots per row, from the block
  # (block, data config, the tokenizer's special ids) -> `preprocess`'s settings (picklable)
  settings: Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict, dict], Any]
  preprocess: Callable[..., Any]     # (record, encoder[, rng], settings) -> a sample or a Skip
  draws: bool = False                # preprocess takes a seeded generator per sample (rng)
  flip_batch: Callable | None = None  # with data.random_flip: (batch, rng) -> batch, after batching
  minima: Mapping[str, float] = dataclasses.field(default_factory=dict)  # of its own fields
  choices: Mapping[str, tuple] = dataclasses.field(default_factory=dict)  # allowed values
  # One captioned image per row: its held-out loss with blank images shows whether the model looks.
  captions_one_image: bool = False


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind(
        name="pairs",
        description="image-text pairs (WebDataset jpg|png|jpeg + txt), as LAION: one image per row",
        fields={}, image_slots=lambda block: 1, settings=laion.Settings.from_config,
        preprocess=laion.preprocess, flip_batch=laion.flip_batch, captions_one_image=True),
    Kind(
        name="documents",
        description="interleaved image-text documents (WebDataset json), as MMC4, and ChatGPT-written "
                    "sequences in the same format (`is_gpt`)",
        fields=dict(max_images=6,
                    sim_threshold=0.24,      # OpenFlamingo README's value; its CLI default (30) drops all
                    min_images=1,
                    min_image_bytes=11_000,  # the reference skips images with len(bytes) // 1000 <= 10
                    matching="argmax"),      # 'argmax' (released models, <= 2.0.1) | 'one_to_one' (main)
        image_slots=lambda block: int(block.max_images), settings=mmc4.Settings.from_config,
        preprocess=mmc4.preprocess, draws=True,
        minima=dict(max_images=1, min_images=0, min_image_bytes=0),
        choices=dict(matching=mmc4.MATCHINGS)),
)}


def get_kind(name: str) -> Kind:
  if name not in KINDS:
    raise ValueError(f"unknown dataset kind {name!r}; known: {', '.join(KINDS)}")
  return KINDS[name]


def dataset(kind: str, **values) -> ml_collections.ConfigDict:
  """A `data.<name>` block of `kind`: the common fields and the kind's own, defaults overridden by
  `values` (a field neither has is an error naming it)."""
  fields = {**COMMON_FIELDS, **get_kind(kind).fields, "kind": kind}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"a {kind} dataset has no field {unknown[0]!r}; its fields: {', '.join(sorted(fields))}")
  return ml_collections.ConfigDict({**fields, **values})
