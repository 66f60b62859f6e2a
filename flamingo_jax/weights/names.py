"""Where every Flax variable comes from in PyTorch checkpoints, and how its layout changes.

One table, built per config, serves import (torch -> Flax) and export (Flax -> torch). Each entry
names a Flax path, the torch key(s) it is made of, and the two exact (bitwise) layout transforms.
Keys are in OpenFlamingo's namespace (`vision_encoder.*`, `perceiver.*`, `lang_encoder.*`);
`hf_lm_key` strips it back to a Hugging Face LM's own naming.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import ml_collections
import numpy as np

from flamingo_jax.models import families
from flamingo_jax.models.xattn import has_xattn

Arrays = Sequence[np.ndarray]


def decoder_attr(family: str) -> str:
  """Where the decoder layers live in the family's HF module (the reference's decoder attr)."""
  return families.get_family(family).decoder_attr


@dataclasses.dataclass(frozen=True)
class Entry:
  """One Flax variable and the torch tensor(s) it corresponds to."""
  collection: str                 # "params" (trainable) or "frozen"
  path: tuple[str, ...]           # path inside the collection
  torch_keys: tuple[str, ...]
  to_flax: Callable[[Arrays], np.ndarray]
  to_torch: Callable[[np.ndarray], list[np.ndarray]]


def _same(keys, path, collection):
  return Entry(collection, path, keys, lambda a: a[0], lambda x: [x])


def _linear(key, path, collection, in_shape=None, out_shape=None):
  """torch Linear weight (out, in) <-> Flax kernel (*in_shape, *out_shape)."""
  def to_flax(a):
    w = a[0].T
    return w.reshape(*(in_shape or w.shape[:1]), *(out_shape or w.shape[1:]))
  def to_torch(x):
    n_in = len(in_shape) if in_shape else 1
    w = x.reshape(int(np.prod(x.shape[:n_in])), -1)
    return [np.ascontiguousarray(w.T)]
  return Entry(collection, path, (key,), to_flax, to_torch)


def _reshape(key, path, collection, shape):
  """A tensor whose Flax shape is a reshape of the torch one (biases of fused projections)."""
  return Entry(collection, path, (key,), lambda a: a[0].reshape(shape),
               lambda x: [x.reshape(-1)])


def _layer_norm(prefix, path, collection, bias=True):
  out = [_same((f"{prefix}.weight",), (*path, "scale"), collection)]
  if bias:
    out.append(_same((f"{prefix}.bias",), (*path, "bias"), collection))
  return out


def vision_entries(c: ml_collections.ConfigDict) -> list[Entry]:
  """open_clip VisionTransformer (`vision_encoder.*`) -> `frozen/vision`."""
  F, P = "frozen", "vision_encoder"
  w, heads = c.width, c.heads
  d = w // heads
  out = [
      Entry(F, ("vision", "conv1", "kernel"), (f"{P}.conv1.weight",),
            lambda a: a[0].transpose(2, 3, 1, 0), lambda x: [np.ascontiguousarray(x.transpose(3, 2, 0, 1))]),
      _same((f"{P}.class_embedding",), ("vision", "class_embedding"), F),
      _same((f"{P}.positional_embedding",), ("vision", "positional_embedding"), F),
      _same((f"{P}.proj",), ("vision", "proj"), F),
      *_layer_norm(f"{P}.ln_pre", ("vision", "ln_pre"), F),
      *_layer_norm(f"{P}.ln_post", ("vision", "ln_post"), F),
  ]
  for i in range(c.layers):
    k, fp = f"{P}.transformer.resblocks.{i}", ("vision", f"resblocks_{i}")
    out += [
        *_layer_norm(f"{k}.ln_1", (*fp, "ln_1"), F),
        *_layer_norm(f"{k}.ln_2", (*fp, "ln_2"), F),
        _fused_qkv(f"{k}.attn.in_proj_weight", (*fp, "in_proj", "kernel"), F, heads, d, w),
        _reshape(f"{k}.attn.in_proj_bias", (*fp, "in_proj", "bias"), F, (3, heads, d)),
        _linear(f"{k}.attn.out_proj.weight", (*fp, "out_proj", "kernel"), F, in_shape=(heads, d)),
        _same((f"{k}.attn.out_proj.bias",), (*fp, "out_proj", "bias"), F),
        _linear(f"{k}.mlp.c_fc.weight", (*fp, "c_fc", "kernel"), F),
        _same((f"{k}.mlp.c_fc.bias",), (*fp, "c_fc", "bias"), F),
        _linear(f"{k}.mlp.c_proj.weight", (*fp, "c_proj", "kernel"), F),
        _same((f"{k}.mlp.c_proj.bias",), (*fp, "c_proj", "bias"), F),
    ]
  return out


def _fused_qkv(key, path, collection, heads, d, dim):
  """torch (3*H*d, D) packed [q; k; v] <-> Flax (D, 3, H, d)."""
  return Entry(collection, path, (key,),
               lambda a: a[0].reshape(3, heads, d, dim).transpose(3, 0, 1, 2),
               lambda x: [np.ascontiguousarray(x.transpose(1, 2, 3, 0).reshape(3 * heads * d, dim))])


def _feed_forward(prefix, path, collection):
  """OpenFlamingo's FeedForward: Sequential(LayerNorm, Linear, GELU, Linear)."""
  return [*_layer_norm(f"{prefix}.0", (*path, "norm"), collection),
          _linear(f"{prefix}.1.weight", (*path, "fc1", "kernel"), collection),
          _linear(f"{prefix}.3.weight", (*path, "fc2", "kernel"), collection)]


def perceiver_entries(c: ml_collections.ConfigDict) -> list[Entry]:
  """PerceiverResampler (`perceiver.*`) -> `params/perceiver`."""
  T, P = "params", "perceiver"
  h, d = c.heads, c.dim_head
  out = [_same((f"{P}.latents",), (P, "latents"), T), *_layer_norm(f"{P}.norm", (P, "norm"), T)]
  if c.max_num_frames is not None:
    out.append(_same((f"{P}.frame_embs",), (P, "frame_embs"), T))
  if c.max_num_media is not None:
    out.append(_same((f"{P}.media_time_embs",), (P, "media_time_embs"), T))
  for l in range(c.depth):
    k, a = f"{P}.layers.{l}", (P, f"layers_{l}_attn")
    out += [
        *_layer_norm(f"{k}.0.norm_media", (*a, "norm_media"), T),
        *_layer_norm(f"{k}.0.norm_latents", (*a, "norm_latents"), T),
        _linear(f"{k}.0.to_q.weight", (*a, "to_q", "kernel"), T, out_shape=(h, d)),
        _linear(f"{k}.0.to_kv.weight", (*a, "to_kv", "kernel"), T, out_shape=(2, h, d)),
        _linear(f"{k}.0.to_out.weight", (*a, "to_out", "kernel"), T, in_shape=(h, d)),
        *_feed_forward(f"{k}.1", (P, f"layers_{l}_ff"), T),
    ]
  return out


def xattn_entries(model: ml_collections.ConfigDict) -> list[Entry]:
  """GatedCrossAttentionBlocks, keyed by their FlamingoLayer path -> `params/xattn_{i}`."""
  T, c = "params", model.xattn
  h, d = c.heads, c.dim_head
  attr = decoder_attr(model.lm.family)
  out = []
  for i in range(model.lm.num_layers):
    if not has_xattn(i, c.every_n_layers):
      continue
    k, p = f"lang_encoder.{attr}.{i}.gated_cross_attn_layer", (f"xattn_{i}",)
    out += [
        _same((f"{k}.attn_gate",), (*p, "attn_gate"), T),
        _same((f"{k}.ff_gate",), (*p, "ff_gate"), T),
        *_layer_norm(f"{k}.attn.norm", (*p, "attn", "norm"), T),
        _linear(f"{k}.attn.to_q.weight", (*p, "attn", "to_q", "kernel"), T, out_shape=(h, d)),
        _linear(f"{k}.attn.to_kv.weight", (*p, "attn", "to_kv", "kernel"), T, out_shape=(2, h, d)),
        _linear(f"{k}.attn.to_out.weight", (*p, "attn", "to_out", "kernel"), T, in_shape=(h, d)),
        *_feed_forward(f"{k}.ff", (*p, "ff"), T),
    ]
  return out


def _qkv_entries(lm, prefix, path, names):
  """The fused self-attention projection, from the family's layout of it."""
  F, h = "frozen", lm.num_heads
  dim = lm.hidden_size
  d = dim // h
  out = []
  layout = families.get_family(lm.family).qkv_layout
  if layout == "separate":  # three projections (OPT) -> one (D, 3, H, d) kernel
    keys = tuple(f"{prefix}.{names[n]}.weight" for n in "qkv")
    out.append(Entry(F, (*path, "kernel"), keys,
                     lambda a: np.stack([w.T.reshape(dim, h, d) for w in a], axis=1),
                     lambda x: [np.ascontiguousarray(x[:, j].reshape(dim, dim).T) for j in range(3)]))
    if lm.use_bias:
      bkeys = tuple(f"{prefix}.{names[n]}.bias" for n in "qkv")
      out.append(Entry(F, (*path, "bias"), bkeys, lambda a: np.stack(a).reshape(3, h, d),
                       lambda x: [x[j].reshape(-1) for j in range(3)]))
  elif layout == "head_interleaved":  # GPT-NeoX: per-head interleaved (H, 3, d) rows
    key = f"{prefix}.{names['qkv']}"
    out.append(Entry(F, (*path, "kernel"), (f"{key}.weight",),
                     lambda a: a[0].reshape(h, 3, d, dim).transpose(3, 1, 0, 2),
                     lambda x: [np.ascontiguousarray(x.transpose(2, 1, 3, 0).reshape(3 * dim, dim))]))
    if lm.use_bias:
      out.append(Entry(F, (*path, "bias"), (f"{key}.bias",),
                       lambda a: a[0].reshape(h, 3, d).transpose(1, 0, 2),
                       lambda x: [np.ascontiguousarray(x.transpose(1, 0, 2).reshape(-1))]))
  elif layout == "thirds":  # MPT: contiguous [q; k; v] thirds
    key = f"{prefix}.{names['qkv']}"
    out.append(_fused_qkv(f"{key}.weight", (*path, "kernel"), F, h, d, dim))
    if lm.use_bias:
      out.append(_reshape(f"{key}.bias", (*path, "bias"), F, (3, h, d)))
  else:
    raise ValueError(f"Unknown qkv_layout {layout!r} of LM family {lm.family!r}")
  return out


def _dense(key, path, use_bias, **shapes):
  out = [_linear(f"{key}.weight", (*path, "kernel"), "frozen", **shapes)]
  if use_bias:
    out.append(_same((f"{key}.bias",), (*path, "bias"), "frozen"))
  return out


def lm_entries(lm: ml_collections.ConfigDict) -> list[Entry]:
  """The decoder LM, in its Hugging Face (or MosaicGPT) naming -> `frozen/lm`."""
  F, naming = "frozen", families.naming(lm)
  names, model = naming.layer, naming.model
  if lm.qk_layer_norm and "q_norm" not in names:
    raise ValueError(f"{lm.family} checkpoints in naming {lm.checkpoint_naming!r} have no QK "
                     "LayerNorm; an MPT with qk_layer_norm uses checkpoint_naming='mosaicgpt'")
  h = lm.num_heads
  d = lm.hidden_size // h
  out = [_same((f"{model['embed']}.weight",), ("lm", "embed", "embedding"), F)]
  if lm.do_layer_norm_before:
    out += _layer_norm(model["final_norm"], ("lm", "final_norm"), F, lm.norm_bias)
  if not lm.tie_embeddings:
    out += [_linear(f"{model['lm_head']}.weight", ("lm", "lm_head", "kernel"), F)]
  if "pos_embed" in model:  # learned positions (OPT)
    out.append(_same((f"{model['pos_embed']}.weight",), ("lm", "pos_embed", "embedding"), F))
    if lm.word_embed_proj_dim and lm.word_embed_proj_dim != lm.hidden_size:
      out += _dense(model["project_in"], ("lm", "project_in"), False)
      out += _dense(model["project_out"], ("lm", "project_out"), False)
  attr = decoder_attr(lm.family)
  for i in range(lm.num_layers):
    k, p = f"{attr}.{i}", ("lm", f"blocks_{i}")
    out += _layer_norm(f"{k}.{names['norm_1']}", (*p, "norm_1"), F, lm.norm_bias)
    out += _layer_norm(f"{k}.{names['norm_2']}", (*p, "norm_2"), F, lm.norm_bias)
    out += _qkv_entries(lm, k, (*p, "attn", "qkv"), names)
    out += _dense(f"{k}.{names['out']}", (*p, "attn", "out"), lm.use_bias, in_shape=(h, d))
    out += _dense(f"{k}.{names['up']}", (*p, "mlp", "up"), lm.use_bias)
    out += _dense(f"{k}.{names['down']}", (*p, "mlp", "down"), lm.use_bias)
    if lm.qk_layer_norm:
      out += _layer_norm(f"{k}.{names['q_norm']}", (*p, "attn", "q_norm"), F, lm.norm_bias)
      out += _layer_norm(f"{k}.{names['k_norm']}", (*p, "attn", "k_norm"), F, lm.norm_bias)
  return out


def flamingo_lm_key(hf_key: str, family: str) -> str:
  """A key of the HF LM -> the same tensor's key inside OpenFlamingo's model (FlamingoLayer path)."""
  attr = decoder_attr(family)
  if hf_key.startswith(attr + "."):
    index, rest = hf_key[len(attr) + 1:].split(".", 1)
    return f"lang_encoder.{attr}.{index}.decoder_layer.{rest}"
  return f"lang_encoder.{hf_key}"


def hf_lm_key(flamingo_key: str, family: str) -> str:
  """Inverse of `flamingo_lm_key`."""
  key = flamingo_key.removeprefix("lang_encoder.")
  return key.replace(".decoder_layer.", ".", 1) if key.startswith(decoder_attr(family) + ".") else key


def lm_entries_in_flamingo_namespace(lm: ml_collections.ConfigDict) -> list[Entry]:
  """`lm_entries`, keyed as inside OpenFlamingo's model (`lang_encoder.*`)."""
  return [dataclasses.replace(e, torch_keys=tuple(flamingo_lm_key(k, lm.family) for k in e.torch_keys))
          for e in lm_entries(lm)]


def flamingo_entries(model: ml_collections.ConfigDict) -> list[Entry]:
  """Every Flax variable of the model except `special_embeddings`, keyed in OpenFlamingo's namespace."""
  return [*vision_entries(model.vision), *perceiver_entries(model.perceiver),
          *xattn_entries(model), *lm_entries_in_flamingo_namespace(model.lm)]
