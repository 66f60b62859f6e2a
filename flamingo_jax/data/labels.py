"""Label masking as OpenFlamingo's training loss does it (labels are unshifted; -100 = ignored)."""
from __future__ import annotations

import numpy as np

IGNORE = -100


def laion_labels(ids: np.ndarray, attention_mask: np.ndarray, media_id: int) -> np.ndarray:
  """Padding and `<image>` are ignored; the caption, `<|endofchunk|>` and EOS are trained."""
  labels = np.where(attention_mask.astype(bool), ids, IGNORE)
  return np.where(ids == media_id, IGNORE, labels).astype(np.int32)


def mmc4_labels(ids: np.ndarray, attention_mask: np.ndarray, media_id: int, eoc_id: int) -> np.ndarray:
  """Padding, everything before the first `<image>`, the tokens after each `<|endofchunk|>` up to
  the next `<image>` (the eoc itself is kept), and `<image>` are ignored."""
  labels = np.where(attention_mask.astype(bool), ids, IGNORE)
  for row in range(ids.shape[0]):
    media = np.flatnonzero(ids[row] == media_id)
    first = media[0] if len(media) else ids.shape[1]
    labels[row, :first] = IGNORE
    for eoc in np.flatnonzero(ids[row] == eoc_id):
      after = media[media > eoc]
      end = after[0] if len(after) else ids.shape[1]
      labels[row, eoc + 1:end] = IGNORE
  return np.where(ids == media_id, IGNORE, labels).astype(np.int32)
