"""Decoding loops over the model's `prefill`/`extend`: greedy, sampling and beam search.

Each step runs as one jitted function on device (greedy: the token choice and the model's
forward pass on it together); the Python loop only checks whether every row (or beam set) is done. Beam search follows Hugging Face's vectorised algorithm (the one
open_flamingo's `generate` uses): 2*beams candidates per step, length-penalised finished
hypotheses, and its default early-stopping heuristic.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.generate import processors

NEG = -1.0e9


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """What to generate and how (HF `generate` argument names and meanings)."""
  max_new_tokens: int = 20
  min_new_tokens: int = 0
  num_beams: int = 1
  length_penalty: float = 1.0
  do_sample: bool = False
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  repetition_penalty: float = 1.0
  no_repeat_ngram_size: int = 0
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0


def _process(scores, sequences, cur_len, prompt_len, s: DecodeSettings):
  """HF's logits processors, in HF's order."""
  scores = processors.repetition_penalty(scores, sequences, cur_len, s.repetition_penalty)
  scores = processors.no_repeat_ngram(scores, sequences, cur_len, s.no_repeat_ngram_size)
  if s.min_new_tokens:
    scores = processors.suppress_eos(scores, s.eos_token_ids, cur_len - prompt_len < s.min_new_tokens)
  return scores


def _warp(scores, s: DecodeSettings):
  """HF's sampling warpers: temperature, top-k, top-p."""
  if s.temperature != 1.0:
    scores = scores / s.temperature
  scores = processors.top_k_filter(scores, s.top_k)
  return processors.top_p_filter(scores, s.top_p)


def _is_eos(tokens, s: DecodeSettings):
  if not s.eos_token_ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(s.eos_token_ids))


def greedy_or_sample(prefill: Callable, step: Callable, input_ids: np.ndarray, s: DecodeSettings,
                     rng: jax.Array) -> np.ndarray:
  """Greedy decoding, or sampling when `s.do_sample`. Returns (B, prompt + generated) ids.

  `step(logits, sequences, finished, cur_len, rng, state) -> (logits, state, sequences, finished)`
  chooses each row's next token and feeds it to the model, one dispatch per token. Whether every
  row has ended is read one step late, while the next step is already queued, so the host never
  waits for the device between tokens; the step queued past the end (pads after every row's end)
  is cut off, giving Hugging Face's output exactly.
  """
  b, prompt_len = input_ids.shape
  max_len = prompt_len + s.max_new_tokens
  logits, state = prefill(max_len)
  sequences = jnp.full((b, max_len), s.pad_token_id, jnp.int32).at[:, :prompt_len].set(input_ids)
  finished = jnp.zeros((b,), bool)
  length, ended_before = prompt_len, None
  for i in range(s.max_new_tokens):
    key = jax.random.fold_in(rng, i)
    if i + 1 == s.max_new_tokens:  # the last token needs no forward pass after it
      _, sequences, finished = choose(logits, sequences, finished, jnp.int32(length), key, s=s, prompt_len=prompt_len)
    else:
      logits, state, sequences, finished = step(logits, sequences, finished, jnp.int32(length), key, state)
    if ended_before is not None and bool(ended_before.all()):
      break  # every row had ended: this step only appended pads
    length += 1
    ended_before = finished
  return np.asarray(sequences[:, :length])


@functools.partial(jax.jit, static_argnames=("s", "prompt_len"))
def choose(logits, sequences, finished, cur_len, rng, *, s: DecodeSettings, prompt_len: int):
  """One greedy/sampling step: process scores, pick tokens, append them, track EOS."""
  scores = _process(logits.astype(jnp.float32), sequences, cur_len, prompt_len, s)
  if s.do_sample:
    token = jax.random.categorical(rng, _warp(scores, s), axis=-1)
  else:
    token = jnp.argmax(scores, axis=-1)
  token = jnp.where(finished, s.pad_token_id, token).astype(jnp.int32)
  sequences = jax.lax.dynamic_update_slice(sequences, token[:, None], (0, cur_len))
  return token, sequences, finished | _is_eos(token, s)


def _gather(tree, flat_indices):
  return jax.tree_util.tree_map(lambda x: x[flat_indices] if x.ndim else x, tree)


def beam_search(prefill: Callable, extend: Callable, input_ids: np.ndarray, s: DecodeSettings,
                rng: jax.Array) -> np.ndarray:
  """HF-equivalent beam search; returns the best beam per row, (B, prompt + generated) ids."""
  b, prompt_len = input_ids.shape
  nb = s.num_beams
  max_len = prompt_len + s.max_new_tokens
  logits, state = prefill(max_len)
  # Every beam of a row starts from the same prompt state.
  rows = jnp.repeat(jnp.arange(b), nb)
  logits, state = _gather((logits, state), rows)
  fill = s.pad_token_id
  running = jnp.full((b, nb, max_len), fill, jnp.int32).at[:, :, :prompt_len].set(
      jnp.asarray(input_ids)[:, None, :])
  carry = dict(
      running=running, running_scores=jnp.zeros((b, nb)).at[:, 1:].set(NEG),
      sequences=running, scores=jnp.full((b, nb), NEG), seq_len=jnp.zeros((b, nb), jnp.int32),
      finished=jnp.zeros((b, nb), bool), improvable=jnp.ones((b, 1), bool))
  cur = prompt_len
  for i in range(s.max_new_tokens):
    carry, origin, tokens, done = _beam_step(logits, carry, jnp.int32(cur), jax.random.fold_in(rng, i),
                                             s=s, prompt_len=prompt_len)
    cur += 1
    if bool(done) or i + 1 == s.max_new_tokens:
      break
    logits, state = extend(tokens, state, origin)
  best = np.asarray(carry["sequences"][:, 0])
  length = int(np.asarray(carry["seq_len"][:, 0]).max())
  return best[:, :max(length, prompt_len)]


@functools.partial(jax.jit, static_argnames=("s", "prompt_len"))
def _beam_step(logits, carry, cur_len, rng, *, s: DecodeSettings, prompt_len: int):
  """One beam-search step, as Hugging Face's `_beam_search` loop body."""
  b, nb, max_len = carry["running"].shape
  keep = max(2, 1 + len(s.eos_token_ids)) * nb
  top_mask = jnp.arange(keep) < nb
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  log_probs = _process(log_probs, carry["running"].reshape(b * nb, max_len), cur_len, prompt_len, s)
  vocab = log_probs.shape[-1]
  total = (log_probs.reshape(b, nb, vocab) + carry["running_scores"][:, :, None]).reshape(b, -1)
  if s.do_sample:
    idx = _sample_without_replacement(rng, total, keep)
    top_scores = jnp.take_along_axis(total, idx, axis=1)
  else:
    top_scores, idx = jax.lax.top_k(total, keep)
  beam, token = idx // vocab, (idx % vocab).astype(jnp.int32)
  cand = jnp.take_along_axis(carry["running"], beam[:, :, None], axis=1)
  cand = jax.lax.dynamic_update_slice(cand, token[:, :, None], (0, 0, cur_len))
  hits = _is_eos(token, s) | (cur_len + 1 >= max_len)
  # Running beams for the next step: the best `nb` candidates that did not stop.
  run_scores = top_scores + hits * NEG
  run_scores, nxt = jax.lax.top_k(run_scores, nb)
  running = jnp.take_along_axis(cand, nxt[:, :, None], axis=1)
  origin = jnp.take_along_axis(beam, nxt, axis=1)
  # Finished hypotheses: merge the stopped top-`nb` candidates into the kept best `nb`.
  lp = top_scores / ((cur_len + 1 - prompt_len) ** s.length_penalty)
  lp = lp + (~carry["improvable"]) * NEG + (~(hits & top_mask[None, :])) * NEG
  merged_seq = jnp.concatenate([carry["sequences"], cand], axis=1)
  merged_scores = jnp.concatenate([carry["scores"], lp], axis=1)
  merged_fin = jnp.concatenate([carry["finished"], hits & top_mask[None, :]], axis=1)
  merged_len = jnp.concatenate([carry["seq_len"], jnp.full((b, keep), cur_len + 1, jnp.int32)], axis=1)
  scores, best = jax.lax.top_k(merged_scores, nb)
  sequences = jnp.take_along_axis(merged_seq, best[:, :, None], axis=1)
  finished = jnp.take_along_axis(merged_fin, best, axis=1)
  seq_len = jnp.take_along_axis(merged_len, best, axis=1)
  # HF's default early-stopping heuristic, evaluated at the new length.
  best_running = run_scores[:, :1] / ((cur_len + 1 - prompt_len) ** s.length_penalty)
  worst_finished = jnp.where(finished, scores.min(axis=1, keepdims=True), NEG)
  improvable = carry["improvable"] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
  done = ~jnp.any(improvable) | jnp.all(hits)
  flat_origin = (origin + jnp.arange(b)[:, None] * nb).reshape(-1)
  new = dict(running=running, running_scores=run_scores,
             sequences=sequences, scores=scores, seq_len=seq_len, finished=finished,
             improvable=improvable)
  tokens = jax.lax.dynamic_slice_in_dim(running, cur_len, 1, axis=2).reshape(-1)
  return new, flat_origin, tokens, done



def _sample_without_replacement(rng, scores, k):
  """Gumbel top-k: k draws without replacement from softmax(scores), per row."""
  gumbel = jax.random.gumbel(rng, scores.shape)
  return jax.lax.top_k(scores + gumbel, k)[1]
