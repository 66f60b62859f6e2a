"""A decoder-only LM whose layers the Flamingo model runs one at a time, so that gated
cross-attention blocks can be interleaved without living inside the (frozen) LM tree.

All weights live in the "frozen" collection.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models import families, layers
from flamingo_jax.models.decoders import positions as pos
from flamingo_jax.models.decoders.block import DecoderBlock
from flamingo_jax.models.layers import FROZEN, Dense, Embed, LayerNorm

OPT_POSITION_OFFSET = 2  # OPT's learned position table has 2 extra leading rows.


class DecoderLM(nn.Module):
  """Embedding, decoder blocks and output head of an MPT, GPT-NeoX or OPT model."""
  cfg: ml_collections.ConfigDict
  remat_policy: str = "none"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    c = self.cfg
    kw = dict(collection=FROZEN, dtype=self.dtype, param_dtype=self.param_dtype)
    self.scheme = families.get_family(c.family).position_scheme
    self.embed = Embed(c.vocab_size, self.embed_dim, c.embed_init_std, **kw)
    if self.scheme == "learned":
      self.pos_embed = Embed(c.max_positions + OPT_POSITION_OFFSET, c.hidden_size, **kw)
    if self.embed_dim != c.hidden_size:  # OPT-350m projects a narrower embedding.
      self.project_in = Dense(c.hidden_size, ("embed",), ("embed",), **kw)
      self.project_out = Dense(self.embed_dim, ("embed",), ("embed",), **kw)
    block_cls = layers.remat(DecoderBlock, self.remat_policy)
    self.blocks = [block_cls(c, dtype=self.dtype, param_dtype=self.param_dtype) for _ in range(c.num_layers)]
    if c.do_layer_norm_before:
      self.final_norm = LayerNorm(c.ln_eps, use_bias=c.norm_bias, **kw)
    if not c.tie_embeddings:
      self.lm_head = Dense(c.vocab_size, ("embed",), ("vocab",), **kw)

  @property
  def embed_dim(self) -> int:
    return self.cfg.word_embed_proj_dim or self.cfg.hidden_size

  def default_positions(self, attention_mask: jax.Array) -> jax.Array:
    """Positions as the HF model's forward derives them when none are given."""
    if self.scheme == "learned":
      return pos.opt_positions(attention_mask)
    length = attention_mask.shape[-1]
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), attention_mask.shape)

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    """(B, L) ids -> (B, L, E) rows of the token table."""
    return self.embed(input_ids)

  def input_hidden(self, token_embeddings: jax.Array, positions: jax.Array) -> jax.Array:
    """Token embeddings -> the first layer's input (learned positions, projection)."""
    h = token_embeddings
    if self.embed_dim != self.cfg.hidden_size:
      h = self.project_in(h)
    if self.scheme == "learned":
      h = h + self.pos_embed(positions + OPT_POSITION_OFFSET)
    return layers.constrain(h, ("batch", "length", "act_embed"))

  def layer(self, index: int, h: jax.Array, allowed: jax.Array, positions: jax.Array,
            cache: dict | None = None, cache_index: jax.Array | None = None):
    """Runs decoder layer `index`; returns (h, its updated KV cache or None)."""
    return self.blocks[index](h, allowed, positions, cache, cache_index)

  def final_hidden(self, h: jax.Array) -> jax.Array:
    """Final LayerNorm (and OPT-350m's projection) before the output head."""
    if self.cfg.do_layer_norm_before:
      h = self.final_norm(h)
    if self.embed_dim != self.cfg.hidden_size:
      h = self.project_out(h)
    return h

  def logits(self, h: jax.Array) -> jax.Array:
    """(B, L, E) final hidden -> (B, L, V) logits (tied table or separate head)."""
    out = self.embed.attend(h) if self.cfg.tie_embeddings else self.lm_head(h)
    return layers.constrain(out, ("batch", "length", "act_vocab"))

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               positions: jax.Array | None = None) -> jax.Array:
    """The plain language model (no images): logits for `input_ids`."""
    if positions is None:
      positions = self.default_positions(attention_mask)
    h = self.input_hidden(self.embed_tokens(input_ids), positions)
    allowed = pos.causal_allowed(attention_mask)
    for i in range(self.cfg.num_layers):
      h, _ = self.layer(i, h, allowed, positions)
    return self.logits(self.final_hidden(h))
