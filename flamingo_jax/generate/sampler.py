"""`Sampler`: one model ready to answer, with its compiled functions.

Everything that runs a trained model forward outside training goes through one Sampler: text
generation (greedy, sampling, beam search), class scoring (a prefilled context continued by each
class's tokens, or one full forward per class) and CLIP image embeddings (RICES). Its functions
are jitted once per model configuration in a process (`compiled_functions`: every Sampler and
`generate()` call of that model shares them; XLA compiles once per input shape) and run inside the mesh's
logical-axis rules, so the model's activation sharding constraints apply. A batch is sharded
over the mesh's batch axes (data x fsdp) when its size allows.

  sampler = Sampler(model_cfg, variables, mesh=mesh, rules=rules)
  tokens = sampler.generate(vision_x, input_ids, attention_mask,
                            DecodeSettings(max_new_tokens=20, num_beams=3, eos_token_ids=(eoc,)))
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from flamingo_jax.generate.search import DecodeSettings, beam_search, choose, greedy_or_sample
from flamingo_jax.models import rules as rules_lib
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.models.vision import clip_embedding_fn


@dataclasses.dataclass(frozen=True)
class CompiledFunctions:
  """One model configuration's jitted inference functions (variables are arguments, so every
  Sampler of that configuration shares them, and XLA's executables with them)."""
  prefill: Any
  encode_images: Any
  extend: Any
  greedy_step: Any
  continuation: Any
  full_forward: Any
  embed: Any


_COMPILED: dict[tuple[str, str], CompiledFunctions] = {}  # by the model config's JSON and the rules


def compiled_functions(model_cfg: ml_collections.ConfigDict, rules: tuple = ()) -> CompiledFunctions:
  """The jitted functions of `model_cfg`, made once per configuration in this process: a second
  Sampler (or `generate()` call) for the same model compiles nothing again. (The logical-axis
  `rules` a trace runs under are not part of jit's own cache key, so they are part of this one.)"""
  key = (model_cfg.to_json_best_effort(sort_keys=True), repr(rules))
  if key not in _COMPILED:
    model = Flamingo(model_cfg)
    _COMPILED[key] = CompiledFunctions(
        prefill=jax.jit(lambda v, x, ids, mask, max_len, media, forward_positions: model.apply(
            v, x, ids, mask, max_len, media, forward_positions, method=Flamingo.prefill), static_argnums=(4, 6)),
        encode_images=jax.jit(lambda v, x: model.apply(v, x, method=Flamingo.encode_images)),
        # The decode state (KV caches) is donated: each token updates it in place, not a copy.
        extend=jax.jit(_extend_fn(model), donate_argnums=2),
        greedy_step=jax.jit(_greedy_step_fn(model), static_argnames=("s", "prompt_len"), donate_argnums=6),
        continuation=jax.jit(_continuation_fn(model)),
        full_forward=jax.jit(_full_forward_fn(model)), embed=jax.jit(clip_embedding_fn(model_cfg)))
  return _COMPILED[key]


class Sampler:
  """A Flamingo's variables and compiled prefill / extend / scoring / embedding functions."""

  def __init__(self, model_cfg: ml_collections.ConfigDict, variables: Any, *, mesh: Mesh | None = None,
               rules: tuple | None = None):
    self.cfg = model_cfg
    self.variables = nn.unbox(variables)
    self.mesh, self.rules = mesh, tuple(rules or ())
    fns = compiled_functions(model_cfg, self.rules)
    self._prefill, self._encode_images, self._extend = fns.prefill, fns.encode_images, fns.extend
    self._greedy_step = fns.greedy_step
    self._continuation, self._full_forward, self._embed = fns.continuation, fns.full_forward, fns.embed

  @classmethod
  def from_loaded(cls, loaded) -> "Sampler":
    """From `weights.load.load_model`'s result."""
    return cls(loaded.config.model, loaded.variables, mesh=loaded.mesh, rules=loaded.rules)

  @property
  def batch_multiple(self) -> int:
    """Rows a batch must be a multiple of to be split over the batch-axis devices."""
    return 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  def context(self):
    """The mesh and its logical-axis rules, entered around every call."""
    if self.mesh is None:
      return contextlib.nullcontext()
    return rules_lib.activate(self.mesh, self.rules)

  def shard_batch(self, x) -> jax.Array:
    """Puts a host batch (leading axis = rows) on the mesh's batch axes; arrays already on
    devices, and batches that do not divide evenly, are left as they are."""
    if (self.mesh is None or isinstance(x, jax.Array) or np.shape(x)[0] % self.batch_multiple
        or jax.process_count() > 1):  # several hosts: callers build global arrays themselves
      return x
    return jax.device_put(np.asarray(x), rules_lib.batch_sharding(self.mesh, np.ndim(x)))

  # -- the compiled pieces ---------------------------------------------------------------------

  def encode_images(self, vision_x) -> jax.Array:
    """(B, T, F, S, S, 3) images -> (B, T, N, D_vision) resampled latents (for `media=`)."""
    with self.context():
      return self._encode_images(self.variables, self.shard_batch(vision_x))

  def prefill(self, vision_x, input_ids, attention_mask, max_length: int, media=None,
              forward_positions: bool = False):
    """(last-position logits (B, V), decode state) of left-padded prompts; see Flamingo.prefill.
    `media`: latents from `encode_images` instead of `vision_x`."""
    with self.context():
      return self._prefill(self.variables, None if media is not None else self.shard_batch(vision_x),
                           self.shard_batch(input_ids), self.shard_batch(attention_mask), max_length,
                           None if media is None else self.shard_batch(media), forward_positions)

  def extend(self, tokens, state, origin=None):
    """Feeds one token per row; `origin` (beam search) picks each row's parent state first."""
    with self.context():
      return self._extend(self.variables, tokens, state, origin)

  def greedy_step(self, logits, sequences, finished, cur_len, rng, state, *, s: DecodeSettings,
                  prompt_len: int):
    """Chooses each row's next token (greedy or sampled, `s`) and feeds it: one dispatch per
    token (search.greedy_or_sample's `step`)."""
    with self.context():
      return self._greedy_step(self.variables, logits, sequences, finished, cur_len, rng, state,
                               s=s, prompt_len=prompt_len)

  def continuation_log_prob(self, state, first_logprobs, tokens) -> jax.Array:
    """Mean log-prob of `tokens` (B, m) after a prefilled context, fed one at a time."""
    with self.context():
      return self._continuation(self.variables, state, first_logprobs, self.shard_batch(tokens))

  def full_forward_log_prob(self, vision_x, input_ids, attention_mask, num_tokens: int) -> jax.Array:
    """Mean log-prob of each row's last `num_tokens` ids from one forward over the whole row."""
    with self.context():
      return self._full_forward(self.variables, self.shard_batch(vision_x), self.shard_batch(input_ids),
                                self.shard_batch(attention_mask), np.zeros(num_tokens, np.int32))

  def embed_images(self, images) -> jax.Array:
    """(N, S, S, 3) CLIP-normalised images -> (N, embed_dim) L2-normalised CLIP embeddings."""
    with self.context():
      return self._embed(self.variables["frozen"]["vision"], self.shard_batch(images))

  # -- decoding --------------------------------------------------------------------------------

  def generate(self, vision_x, input_ids, attention_mask, settings: DecodeSettings | None = None,
               rng: jax.Array | None = None, media=None, **overrides) -> np.ndarray:
    """Continues left-padded prompts; returns (B, prompt_len + generated) token ids. `media`:
    the prompts' image latents (`encode_images`) instead of `vision_x`.

    `settings` (fields replaced by `overrides`, HF `generate` names) say how. Rows that stop early
    (an EOS id) are filled with the pad id; the result is cut at the longest row, as Hugging
    Face's `generate` does. OpenFlamingo stops at `<|endofchunk|>`.
    """
    s = dataclasses.replace(settings or DecodeSettings(), **overrides)
    s = dataclasses.replace(s, eos_token_ids=tuple(int(t) for t in s.eos_token_ids),
                            pad_token_id=int(s.pad_token_id))
    if s.num_beams < 1 or s.max_new_tokens < 1:
      raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {s.num_beams}, {s.max_new_tokens}")
    input_ids = np.asarray(input_ids, np.int32)
    attention_mask = np.asarray(attention_mask, np.int32)
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
      raise ValueError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must "
                       "both be (batch, length)")
    if (attention_mask[:, -1] == 0).any():
      raise ValueError("Prompts must be left-padded: the last position of every row must be a real token")
    prefill = lambda max_len: self.prefill(vision_x, input_ids, attention_mask, max_len, media=media)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    if s.num_beams > 1:
      return beam_search(prefill, self.extend, input_ids, s, rng)
    step = functools.partial(self.greedy_step, s=s, prompt_len=input_ids.shape[1])
    return greedy_or_sample(prefill, step, input_ids, s, rng)


def _extend_fn(model: Flamingo):
  def extend(v, tok, state, origin):
    if origin is not None:  # beam search: each new beam continues the state of its origin row
      state = jax.tree_util.tree_map(lambda x: x[origin] if x.ndim else x, state)
    return model.apply(v, tok, state, method=Flamingo.extend)
  return extend


def _greedy_step_fn(model: Flamingo):
  def greedy_step(v, logits, sequences, finished, cur_len, rng, state, *, s, prompt_len):
    token, sequences, finished = choose(logits, sequences, finished, cur_len, rng, s=s, prompt_len=prompt_len)
    logits, state = model.apply(v, token, state, method=Flamingo.extend)
    return logits, state, sequences, finished
  return greedy_step


def _continuation_fn(model: Flamingo):
  def continuation(v, state, first_logprobs, tokens):
    lp = jnp.take_along_axis(first_logprobs, tokens[:, :1], axis=-1)[:, 0]

    def step(st, pair):
      token, target = pair
      logits, st = model.apply(v, token, st, method=Flamingo.extend)
      return st, jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                                     target[:, None], axis=-1)[:, 0]

    _, rest = jax.lax.scan(step, state, (tokens[:, :-1].T, tokens[:, 1:].T))
    return (lp + rest.sum(0)) / tokens.shape[1]
  return continuation


def _full_forward_fn(model: Flamingo):
  def full_forward(v, x, ids, mask, num_class_tokens):
    m = num_class_tokens.shape[0]
    logits = model.apply(v, x, ids, mask)[:, -m - 1:-1].astype(jnp.float32)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, -m:, None], axis=-1)[..., 0]
    return lp.mean(-1)
  return full_forward
