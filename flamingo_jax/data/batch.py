"""The batch contract: which datasets a training step reads (`data.mixture`, in its order), and
what each batch holds. The pipeline checks every batch it makes against it, the trainer every batch it feeds.

Per dataset, a batch is a dict of arrays (B rows, N image slots, L tokens, S pixels):

  images          uint8   (B, N, 1, S, S, 3)  channel-last, resized and cropped as CLIP does, not
                                              yet normalised (the step does that on the device:
                                              data/image_preprocess.normalize); zeros in unused slots
  image_mask      bool    (B, N)              which slots hold a real image
  input_ids       int32   (B, L)
  attention_mask  int32   (B, L)              1 for real tokens
  labels          int32   (B, L)              unshifted, -100 where no loss is taken

N is the dataset kind's slots per row (data/kinds.py: 1 for pairs, `max_images` for documents);
L is `data.<name>.max_tokens`. E.g. a document row with two real images of max_images=3 has
image_mask [True, True, False] and images[row, 2] all zeros.
"""
from __future__ import annotations

from typing import Mapping

import ml_collections
import numpy as np

from flamingo_jax.data import kinds

FIELDS = {"images": np.uint8, "image_mask": np.bool_, "input_ids": np.int32,
          "attention_mask": np.int32, "labels": np.int32}


def mixture(data_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The datasets a step reads, in one order everywhere: dataset seeds (`data.seed + index`),
  iterators, checkpoint items, losses, logs. E.g. "laion,mmc4" -> ("laion", "mmc4")."""
  return tuple(n.strip() for n in str(data_cfg.mixture).split(",") if n.strip())


def kind_of(name: str, data_cfg: ml_collections.ConfigDict) -> kinds.Kind:
  return kinds.get_kind(data_cfg[name].kind)


def loss_weights(data_cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """{dataset: its weight in the training loss}, in the mixture's order."""
  return {name: float(data_cfg[name].loss_weight) for name in mixture(data_cfg)}


def image_slots(name: str, data_cfg: ml_collections.ConfigDict) -> int:
  """N: image slots per row of dataset `name`."""
  return kind_of(name, data_cfg).image_slots(data_cfg[name])


def batch_shapes(name: str, data_cfg: ml_collections.ConfigDict,
                 batch_size: int | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{field: (shape, dtype)} of a batch of `name` (default: the config's global batch size)."""
  if name not in mixture(data_cfg):
    raise ValueError(f"{name!r} is not a dataset of data.mixture={data_cfg.mixture!r}")
  b = data_cfg[name].batch_size if batch_size is None else batch_size
  n, length, s = image_slots(name, data_cfg), data_cfg[name].max_tokens, data_cfg.image_size
  shapes = {"images": (b, n, 1, s, s, 3), "image_mask": (b, n)}
  shapes.update({k: (b, length) for k in ("input_ids", "attention_mask", "labels")})
  return {k: (shape, np.dtype(FIELDS[k])) for k, shape in shapes.items()}


def check_batch(name: str, batch: Mapping, shapes: Mapping[str, tuple]) -> None:
  """Raises ValueError naming the dataset and field when `batch` breaks the contract `shapes`."""
  problems = [f"missing {k}" for k in shapes if k not in batch]
  problems += [f"unexpected {k}" for k in batch if k not in shapes]
  for k, (shape, dtype) in shapes.items():
    if k in batch and (tuple(batch[k].shape) != tuple(shape) or np.dtype(batch[k].dtype) != dtype):
      problems.append(f"{k} is {np.dtype(batch[k].dtype).name}{list(batch[k].shape)}, "
                      f"expected {dtype.name}{list(shape)}")
  if problems:
    raise ValueError(f"{name} batch breaks the batch contract (flamingo_jax/data/batch.py): "
                     + "; ".join(problems))
