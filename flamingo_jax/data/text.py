"""Tokenization to fixed length, as the reference's `tokenizer(text, max_length=L, truncation=True,
padding="max_length")` does it, without touching the shared tokenizer's state.

The HF call sets truncation and padding on the Rust tokenizer it wraps before encoding. LAION and
MMC4 use different lengths and Grain maps samples on many threads, so calling it from the pipeline
would race. `TextEncoder` keeps a private copy of the Rust tokenizer and truncates explicitly, in
the same order the library does: encode without special tokens, cut to leave room for them, add
them (BOS for OPT-style tokenizers; nothing for GPT-NeoX/MPT), pad right with the pad id.
"""
from __future__ import annotations

import numpy as np
import tokenizers
import transformers


class TextEncoder:
  """Picklable fixed-length encoder for one HF fast tokenizer (sent to Grain worker processes)."""

  def __init__(self, tok: transformers.PreTrainedTokenizerBase):
    if tok.pad_token_id is None:
      raise ValueError("The tokenizer has no pad token; load it with data.tokenizer.load_tokenizer")
    self._backend = tokenizers.Tokenizer.from_str(tok.backend_tokenizer.to_str())
    self._backend.no_truncation()
    self._backend.no_padding()
    self._n_special = tok.num_special_tokens_to_add(pair=False)
    self.pad_id = int(tok.pad_token_id)
    self.eos_token = tok.eos_token

  def encode(self, text: str, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (int32 ids, int32 attention mask), each (max_tokens,), right-padded."""
    enc = self._backend.encode(text, add_special_tokens=False)
    if len(enc.ids) + self._n_special > max_tokens:
      enc.truncate(max(max_tokens - self._n_special, 0))
    ids = self._backend.post_process(enc, None, True).ids[:max_tokens]
    out = np.full((max_tokens,), self.pad_id, np.int32)
    out[:len(ids)] = ids
    return out, (np.arange(max_tokens) < len(ids)).astype(np.int32)
