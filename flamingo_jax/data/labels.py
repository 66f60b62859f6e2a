"""Label masking as OpenFlamingo's training loop does it (spec 4.3).

Labels are unshifted copies of the ids (the loss shifts them), with -100 where no loss is taken.
Padding is recognised by its id, as the reference does (not by the attention mask), so a tokenizer
whose pad id is also a real token masks that token too, exactly as there.
"""
from __future__ import annotations

import numpy as np

IGNORE = -100


def laion_labels(ids: np.ndarray, pad_id: int, media_id: int) -> np.ndarray:
  """int[..., L] ids -> labels: pad and `<image>` ignored; caption, `<|endofchunk|>`, EOS trained."""
  ids = np.asarray(ids)
  return np.where((ids == pad_id) | (ids == media_id), IGNORE, ids).astype(np.int32)


def _mmc4_row(ids: np.ndarray, media_id: int, eoc_id: int) -> np.ndarray:
  """Positions ignored in one row by the interleaved rules (before pad and `<image>` masking)."""
  ignored = np.zeros(ids.shape, bool)
  media = np.flatnonzero(ids == media_id)
  ignored[:media[0] if len(media) else len(ids)] = True  # text before the first image
  for eoc in np.flatnonzero(ids == eoc_id):
    later = media[media > eoc]
    ignored[eoc + 1:later[0] if len(later) else len(ids)] = True  # after a chunk, up to the next image
  return ignored


def mmc4_labels(ids: np.ndarray, pad_id: int, media_id: int, eoc_id: int) -> np.ndarray:
  """int[B, L] ids -> labels: pad, everything before the first `<image>`, the tokens after each
  `<|endofchunk|>` up to the next `<image>` (the eoc itself is trained), and `<image>` ignored."""
  ids = np.asarray(ids)
  ignored = np.stack([_mmc4_row(row, media_id, eoc_id) for row in ids.reshape(-1, ids.shape[-1])])
  ignored = ignored.reshape(ids.shape) | (ids == pad_id) | (ids == media_id)
  return np.where(ignored, IGNORE, ids).astype(np.int32)
