"""The Flamingo model: composition only.

Images are encoded once (frozen ViT -> trainable resampler); the frozen LM then runs layer by
layer with a trainable gated cross-attention block before every Nth layer.

Variables: {"params": trainable, "frozen": frozen}. Trainable: `perceiver`, `xattn_{i}` and, in
the variants that train them, `special_embeddings` (the `<|endofchunk|>` and `<image>` rows that
replace those rows of the frozen table, for the input and for a tied output projection).
Frozen: `vision`, `lm`.

Legend: B batch, T images, F frames, S image size, L text length, N latents.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.models import layers, packing as packing_lib
from flamingo_jax.models.decoders import positions as pos
from flamingo_jax.models.decoders.lm import DecoderLM
from flamingo_jax.models.layer_groups import scanned_groups
from flamingo_jax.models.perceiver import PerceiverResampler
from flamingo_jax.models.vision import VisionTransformer
from flamingo_jax.models.xattn import (GatedCrossAttentionBlock, attends_empty_slot, has_xattn,
                                       media_text_time)


class Flamingo(nn.Module):
  """OpenFlamingo: `(vision_x, input_ids, attention_mask) -> logits`."""
  cfg: ml_collections.ConfigDict

  def setup(self):
    c = self.cfg
    dtype, param_dtype, frozen_dtype = (jnp.dtype(c.dtype), jnp.dtype(c.param_dtype),
                                        jnp.dtype(c.frozen_dtype))
    self.vision = VisionTransformer(c.vision, c.remat_policy, dtype, frozen_dtype, bool(c.scan_layers))
    self.perceiver = PerceiverResampler(c.perceiver, c.remat_policy, dtype, param_dtype, bool(c.scan_layers))
    self.lm = DecoderLM(c.lm, c.remat_policy, dtype, frozen_dtype)
    if c.scan_layers:
      self.layers = scanned_groups(c)
      self.xattn = {}
    else:
      block_cls = layers.remat(GatedCrossAttentionBlock, c.remat_policy)
      self.xattn = {i: block_cls(c.xattn, c.lm.hidden_size, dtype, param_dtype, name=f"xattn_{i}")
                    for i in range(c.lm.num_layers) if has_xattn(i, c.xattn.every_n_layers)}
    if c.train_special_embeddings:
      self.special_embeddings = layers.make_param(
          self, layers.TRAINABLE, "special_embeddings", nn.initializers.normal(0.02),
          (2, self.lm.embed_dim), param_dtype, (None, "embed"))

  @property
  def special_token_ids(self) -> tuple[int, int]:
    """Ids whose embedding rows are trainable, in the row order of `special_embeddings`."""
    return (self.cfg.eoc_token_id, self.cfg.media_token_id)

  def encode_images(self, vision_x: jax.Array, image_mask: jax.Array | None = None,
                    packing: tuple[int, int] | None = None,
                    text_time: jax.Array | None = None) -> jax.Array:
    """(B, T, F, S, S, 3) normalised images -> (B, T, N, D_vision) resampled latents.

    `image_mask` (B, T) marks the slots that hold a real image; the others get a blank
    (all-zero) image's latents whatever their pixels. With `packing` = (groups, per_group), the
    vision tower and the resampler run only on a buffer of each group's first `per_group` real
    images (models/packing.py; a group is B / groups consecutive rows, one device's share), plus
    one blank image; the latents are the same as without packing. Given the text's `text_time`
    (xattn.media_text_time), the blank image is encoded only when a token attends an empty slot.
    """
    media = self._encode_media(vision_x, image_mask, packing, text_time)
    return packing_lib.unpack(**media) if isinstance(media, dict) else media

  def _encode_media(self, vision_x, image_mask, packing, text_time) -> jax.Array | dict:
    """`encode_images`, except that packed media stay packed (models/packing.py's dict), so
    that each gated block projects the buffer's latents to keys and values, not every slot's."""
    if vision_x.ndim != 6:
      raise ValueError(f"vision_x must be (batch, images, frames, height, width, 3), got {vision_x.shape}")
    if image_mask is None:
      return self._encode(vision_x)
    if packing is None:
      return self._encode(jnp.where(image_mask[:, :, None, None, None, None], vision_x, 0))
    if self.cfg.perceiver.max_num_media is not None:
      raise ValueError("Image packing loses each image's slot index, which perceiver.max_num_media "
                       "embeds; set the data's image_buffer to -1 for this model")
    groups, per_group = packing
    order, valid = packing_lib.pack_order(image_mask, groups, per_group)
    buffer = packing_lib.gather_slots(vision_x, order, groups)
    buffer = jnp.where(valid[:, :, None, None, None, None], buffer, 0)
    latents = self._encode(buffer)
    needed = None if text_time is None else attends_empty_slot(
        text_time, image_mask, self.cfg.xattn.only_attend_immediate_media)
    blank = self._blank_latents(jnp.zeros((1, 1, *vision_x.shape[2:]), vision_x.dtype), latents[0, 0], needed)
    return {"values": latents, "fill": blank,
            "sources": packing_lib.slot_sources(order, valid, image_mask.shape)}

  def _blank_latents(self, blank_image: jax.Array, like: jax.Array, needed: jax.Array | None) -> jax.Array:
    """(N, D) latents of `blank_image` (1, 1, F, S, S, 3), which empty slots get. When `needed`
    (a traced bool) is False, no token attends an empty slot, so they cannot reach the loss or
    any gradient (their attention weights are exactly 0): the tower skips the blank image and the
    empty slots get zeros (`like`'s shape and dtype) instead."""
    encode = lambda mdl: mdl._encode(blank_image)[0, 0]
    if needed is None or self.is_initializing():
      return encode(self)
    return nn.cond(needed, encode, lambda mdl: jnp.zeros_like(like), self)

  def _encode(self, vision_x: jax.Array) -> jax.Array:
    """Frozen ViT then resampler, every slot: (B, T, F, S, S, 3) -> (B, T, N, D_vision)."""
    b, t, f = vision_x.shape[:3]
    tokens = self.vision(vision_x.reshape(b * t * f, *vision_x.shape[3:]))
    tokens = jax.lax.stop_gradient(tokens)  # frozen tower: nothing upstream needs its gradient
    return self.perceiver(tokens.reshape(b, t, f, *tokens.shape[1:]))

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings with the trainable special rows swapped in."""
    h = self.lm.embed_tokens(input_ids)
    if self.cfg.train_special_embeddings:
      rows = self.special_embeddings.astype(h.dtype)
      for row, token_id in enumerate(self.special_token_ids):
        h = jnp.where((input_ids == token_id)[..., None], rows[row], h)
    return h

  def output_logits(self, h: jax.Array) -> jax.Array:
    """Final norm and output head; a tied head uses the trainable special rows too."""
    h = self.lm.final_hidden(h)
    logits = self.lm.logits(h)
    if self.cfg.train_special_embeddings and self.cfg.lm.tie_embeddings:
      special = jnp.einsum("...e,se->...s", h, self.special_embeddings.astype(h.dtype))
      logits = logits.at[..., jnp.array(self.special_token_ids)].set(special.astype(logits.dtype))
    return logits

  def _run_layers(self, h, text_time, allowed, positions, *, media=None, media_kv=None,
                  caches=None, cache_index=None):
    """All decoder layers with their gated blocks. Each gated block attends to `media` (B, T, N, E)
    or packed, or to its cached `media_kv`. Returns (h, media_kv, caches) for the decode state."""
    if self.cfg.scan_layers:
      h, out = self.layers(h, {"media_kv": media_kv, "caches": caches}, allowed, positions,
                           text_time, media, cache_index)
      return h, out["media_kv"], out["caches"]
    if media_kv is None:
      media_kv = {i: block.media_kv(media) for i, block in self.xattn.items()}
    new_caches = []
    for i in range(self.cfg.lm.num_layers):
      if i in self.xattn:
        h = self.xattn[i](h, media_kv[i], text_time)
      h, cache = self.lm.layer(i, h, allowed, positions,
                               None if caches is None else caches[i], cache_index)
      new_caches.append(cache)
    return h, media_kv, (None if caches is None else new_caches)

  def decode(self, media: jax.Array, input_ids: jax.Array, attention_mask: jax.Array,
             positions: jax.Array | None = None, text_time: jax.Array | None = None) -> jax.Array:
    """Runs the LM with gated cross-attention to `media` (B, T, N, D_vision), or packed media
    (models/packing.py); returns logits."""
    if positions is None:
      positions = self.lm.default_positions(attention_mask)
    if text_time is None:
      text_time = media_text_time(input_ids, self.cfg.media_token_id)
    h = self.lm.input_hidden(self.embed_tokens(input_ids), positions)
    h, _, _ = self._run_layers(h, text_time, pos.causal_allowed(attention_mask), positions,
                               media=media)
    return self.output_logits(h)

  def __call__(self, vision_x: jax.Array, input_ids: jax.Array, attention_mask: jax.Array,
               positions: jax.Array | None = None, image_mask: jax.Array | None = None,
               packing: tuple[int, int] | None = None) -> jax.Array:
    """Full forward: (B, T, F, S, S, 3) images and (B, L) text -> (B, L, V) logits; `image_mask`
    and `packing` as in `encode_images`."""
    text_time = media_text_time(input_ids, self.cfg.media_token_id)
    return self.decode(self._encode_media(vision_x, image_mask, packing, text_time), input_ids,
                       attention_mask, positions, text_time)

  # -- KV-cached generation: `prefill` once per prompt, then `extend` once per new token. --

  def prefill(self, vision_x: jax.Array | None, input_ids: jax.Array, attention_mask: jax.Array,
              max_length: int, media: jax.Array | None = None,
              forward_positions: bool = False) -> tuple[jax.Array, dict]:
    """Encodes the images, runs the (left-padded) prompt and returns the last position's logits
    (B, V) and a decode state holding every layer's KV cache of `max_length` slots. `media`
    (B, T, N, D_vision), latents `encode_images` made earlier (cached), replaces `vision_x`.
    Positions are generation's (the real tokens counted); with `forward_positions`, those of the
    HF model's plain forward (slots for rotary and ALiBi models: the real tokens' the same
    relative to each other, the padding's no longer 0), which a continuation that attends to the
    padding needs (evaluate/inference.py: reference_cache)."""
    b, length = input_ids.shape
    if length > max_length:
      raise ValueError(f"Prompt of {length} tokens exceeds max_length={max_length}")
    lm = self.cfg.lm
    heads = lm.num_heads
    n = self.cfg.xattn.every_n_layers
    # Scanned caches are (B, groups, ...) per position j in a group; unrolled ones (B, ...) per layer.
    lead = (b, lm.num_layers // n) if self.cfg.scan_layers else (b,)
    zeros = jnp.zeros((*lead, max_length, heads, lm.hidden_size // heads), jnp.dtype(self.cfg.dtype))
    caches = [{"k": zeros, "v": zeros} for _ in range(n if self.cfg.scan_layers else lm.num_layers)]
    key_valid = jnp.zeros((b, max_length), bool).at[:, :length].set(attention_mask.astype(bool))
    positions = (self.lm.default_positions(attention_mask) if forward_positions
                 else pos.generation_positions(attention_mask))
    text_time = media_text_time(input_ids, self.cfg.media_token_id)
    slots = jnp.arange(max_length)
    allowed = (slots[None, :] <= jnp.arange(length)[:, None])[None, None] & key_valid[:, None, None, :]
    h = self.lm.input_hidden(self.embed_tokens(input_ids), positions)
    h, media_kv, caches = self._run_layers(h, text_time, allowed, positions,
                                           media=self.encode_images(vision_x) if media is None else media,
                                           caches=caches,
                                           cache_index=0)
    state = {"caches": caches, "media_kv": media_kv, "key_valid": key_valid,
             "index": jnp.asarray(length, jnp.int32),
             # New tokens attend to the prompt's last image (the reference's cached path).
             "text_time": text_time[:, -1],
             # (a plain forward continuing a cache counts every slot before it, padding included)
             "next_position": jnp.full((b,), length, jnp.int32) if forward_positions else positions[:, -1] + 1}
    return self.output_logits(h[:, -1:])[:, 0], state

  def extend(self, token_ids: jax.Array, state: dict) -> tuple[jax.Array, dict]:
    """Feeds one new token per row (B,) at slot `state['index']`; returns (B, V) logits and the
    updated state."""
    index = state["index"]
    b, max_length = state["key_valid"].shape
    key_valid = jax.lax.dynamic_update_slice(state["key_valid"], jnp.ones((b, 1), bool), (0, index))
    allowed = (jnp.arange(max_length) <= index)[None, None, None, :] & key_valid[:, None, None, :]
    positions = state["next_position"][:, None]
    ids = token_ids[:, None]
    h = self.lm.input_hidden(self.embed_tokens(ids), positions)
    h, _, caches = self._run_layers(h, state["text_time"][:, None], allowed, positions,
                                    media_kv=state["media_kv"], caches=state["caches"],
                                    cache_index=index)
    state = dict(state, caches=caches, key_valid=key_valid, index=index + 1,
                 next_position=state["next_position"] + 1)
    return self.output_logits(h)[:, 0], state
