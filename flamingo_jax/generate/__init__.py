"""KV-cached generation: the vision tower and resampler run once per prompt, the gated blocks'
image keys/values and every layer's self-attention keys/values are cached.

  tokens = generate(model_cfg, variables, vision_x, input_ids, attention_mask,
                    max_new_tokens=20, num_beams=3, eos_token_ids=(eoc_id,))
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from flamingo_jax.generate.search import DecodeSettings, beam_search, greedy_or_sample
from flamingo_jax.models.flamingo import Flamingo

__all__ = ["DecodeSettings", "generate"]


@functools.lru_cache(maxsize=8)
def _compiled(model_cfg_json: str):
  cfg = ml_collections.ConfigDict(__import__("json").loads(model_cfg_json))
  model = Flamingo(cfg)
  prefill = jax.jit(lambda v, x, ids, mask, max_len: model.apply(v, x, ids, mask, max_len,
                                                                   method=Flamingo.prefill),
                    static_argnums=4)

  def extend(v, tok, state, origin):
    if origin is not None:  # beam search: each new beam continues the state of its origin row
      state = jax.tree_util.tree_map(lambda x: x[origin] if x.ndim else x, state)
    return model.apply(v, tok, state, method=Flamingo.extend)

  return prefill, jax.jit(extend)


def generate(model_cfg: ml_collections.ConfigDict, variables: Any, vision_x: np.ndarray,
             input_ids: np.ndarray, attention_mask: np.ndarray, *, max_new_tokens: int,
             num_beams: int = 1, length_penalty: float = 1.0, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
             min_new_tokens: int = 0, eos_token_ids: Sequence[int] = (), pad_token_id: int = 0,
             rng: jax.Array | None = None) -> np.ndarray:
  """Continues left-padded prompts; returns (B, prompt_len + generated) token ids.

  Rows that stop early (an EOS id) are filled with `pad_token_id`; the result is cut at the
  longest row, as Hugging Face's `generate` does. OpenFlamingo stops at `<|endofchunk|>`.
  """
  if num_beams < 1 or max_new_tokens < 1:
    raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {num_beams}, {max_new_tokens}")
  input_ids = np.asarray(input_ids, np.int32)
  attention_mask = np.asarray(attention_mask, np.int32)
  if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
    raise ValueError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must "
                     "both be (batch, length)")
  if (attention_mask[:, -1] == 0).any():
    raise ValueError("Prompts must be left-padded: the last position of every row must be a real token")
  settings = DecodeSettings(
      max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, num_beams=num_beams,
      length_penalty=length_penalty, do_sample=do_sample, temperature=temperature, top_k=top_k,
      top_p=top_p, repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
      eos_token_ids=tuple(int(t) for t in eos_token_ids), pad_token_id=int(pad_token_id))
  prefill_fn, extend_fn = _compiled(model_cfg.to_json())
  variables = nn.unbox(variables)
  prefill = lambda max_len: prefill_fn(variables, vision_x, input_ids, attention_mask, max_len)
  extend = lambda tokens, state, origin=None: extend_fn(variables, tokens, state, origin)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  search = beam_search if num_beams > 1 else greedy_or_sample
  return search(prefill, extend, input_ids, settings, rng)
