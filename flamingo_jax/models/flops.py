"""Model FLOPs of a training step, counted from the config: every matrix product of the model.

XLA's cost analysis counts the body of a scanned layer stack once, and nothing for the dots the
GPU backend hands to cuBLAS; this count needs neither. It is the numerator of MFU (training
metrics and `python -m flamingo_jax.plan` both use it) and is checked against XLA's count of the
unrolled step in tests/test_plan.py.

A product `x @ W` costs 2·rows·fan_in·fan_out forward; its backward costs as much again for the
weight gradient if W is trained, and again for the input gradient if anything upstream of x is
trained. So the frozen ViT has no backward at all, a frozen decoder layer only an input
gradient, and one below the first gated block (special embeddings frozen, as OF-4B) none.
Activation recomputation (remat) is not model work and is not counted.

  counts = step_flops(cfg.model, {"mmc4": (batch, images_encoded, length), "laion": ...})
  counts.total  # forward + backward, summed over the datasets and the parts
"""
from __future__ import annotations

import collections
import dataclasses

import ml_collections

from flamingo_jax.models.xattn import has_xattn

PARTS = ("vision", "resampler", "xattn", "lm", "head")


@dataclasses.dataclass
class Flops:
  """Forward and backward FLOPs per part of the model (`PARTS`)."""
  forward: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  backward: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  @property
  def total(self) -> float:
    return float(sum(self.forward.values()) + sum(self.backward.values()))

  def dense(self, part: str, rows: int, fan_in: int, fan_out: int, *, weight_grad: bool,
            input_grad: bool) -> None:
    """`rows` vectors times a (fan_in, fan_out) matrix."""
    f = 2.0 * rows * fan_in * fan_out
    self.forward[part] += f
    self.backward[part] += f * (weight_grad + input_grad)

  def attention(self, part: str, groups: int, queries: int, keys: int, head_dim: int, *,
                grad: bool) -> None:
    """Scores q·kᵀ and weights·v for `groups` (batch × heads) of `queries` × `keys`; with `grad`
    (q, k and v all depend on something trained) each product has two input gradients."""
    f = 2.0 * groups * queries * keys * head_dim
    self.forward[part] += 2 * f
    self.backward[part] += 4 * f if grad else 0.0

  def __iadd__(self, other: "Flops") -> "Flops":
    self.forward.update(other.forward)
    self.backward.update(other.backward)
    return self


def vision_flops(c: ml_collections.ConfigDict, images: int, out: Flops) -> None:
  """The frozen ViT on `images` images: forward only."""
  v = c.vision
  patches = (v.image_size // v.patch_size) ** 2
  tokens, mlp = images * (patches + 1), int(v.width * v.mlp_ratio)
  kw = dict(weight_grad=False, input_grad=False)
  out.dense("vision", images * patches, 3 * v.patch_size ** 2, v.width, **kw)
  for _ in range(v.layers):
    out.dense("vision", tokens, v.width, 3 * v.width, **kw)
    out.attention("vision", images * v.heads, patches + 1, patches + 1, v.width // v.heads, grad=False)
    out.dense("vision", tokens, v.width, v.width, **kw)
    out.dense("vision", tokens, v.width, mlp, **kw)
    out.dense("vision", tokens, mlp, v.width, **kw)


def resampler_flops(c: ml_collections.ConfigDict, images: int, out: Flops) -> None:
  """The trained resampler on `images` single-frame images: everything has both gradients but
  the keys and values of the frozen image tokens (each layer's norm_media folded into its to_kv,
  models/perceiver.py), which need an input gradient only if trained embeddings are added to them."""
  p, dim = c.perceiver, c.vision.width
  media = (c.vision.image_size // c.vision.patch_size) ** 2
  inner, latents = p.heads * p.dim_head, images * p.num_latents
  kw = dict(weight_grad=True, input_grad=True)
  media_trained = p.max_num_media is not None or p.max_num_frames is not None
  for _ in range(p.depth):
    out.dense("resampler", latents, dim, inner, **kw)
    out.dense("resampler", images * media, dim, 2 * inner, weight_grad=True, input_grad=media_trained)
    out.dense("resampler", latents, dim, 2 * inner, **kw)
    out.attention("resampler", images * p.heads, p.num_latents, media + p.num_latents, p.dim_head,
                  grad=True)
    out.dense("resampler", latents, inner, dim, **kw)
    out.dense("resampler", latents, dim, p.ff_mult * dim, **kw)
    out.dense("resampler", latents, p.ff_mult * dim, dim, **kw)


def decoder_flops(c: ml_collections.ConfigDict, batch: int, media: int, length: int, out: Flops,
                  projected: int | None = None) -> None:
  """Gated blocks, frozen decoder layers and the output head on `batch` rows of `length` tokens,
  each row with `media` image slots of latents, of which the blocks project `projected` images'
  (default every slot; packed, the buffer and the fill) to keys and values."""
  projected = batch * media if projected is None else projected
  lm, x = c.lm, c.xattn
  rows, width = batch * length, lm.hidden_size
  embed = lm.get("word_embed_proj_dim") or width
  inner = x.heads * x.dim_head
  grad = bool(c.train_special_embeddings)  # does anything below this point get trained?
  if embed != width:
    out.dense("lm", rows, embed, width, weight_grad=False, input_grad=grad)
  for i in range(lm.num_layers):
    if has_xattn(i, x.every_n_layers):
      kw = dict(weight_grad=True, input_grad=True)  # its LayerNorms are trained
      out.dense("xattn", projected * c.perceiver.num_latents, c.vision.width, 2 * inner, **kw)
      out.dense("xattn", rows, width, inner, **kw)
      out.attention("xattn", batch * x.heads, length, media * c.perceiver.num_latents, x.dim_head,
                    grad=True)
      out.dense("xattn", rows, inner, width, **kw)
      out.dense("xattn", rows, width, x.ff_mult * width, **kw)
      out.dense("xattn", rows, x.ff_mult * width, width, **kw)
      grad = True
    kw = dict(weight_grad=False, input_grad=grad)
    out.dense("lm", rows, width, 3 * width, **kw)
    out.attention("lm", batch * lm.num_heads, length, length, width // lm.num_heads, grad=grad)
    out.dense("lm", rows, width, width, **kw)
    out.dense("lm", rows, width, lm.mlp_hidden_size, **kw)
    out.dense("lm", rows, lm.mlp_hidden_size, width, **kw)
  if embed != width:
    out.dense("lm", rows, width, embed, weight_grad=False, input_grad=True)
  out.dense("head", rows, embed, lm.vocab_size, weight_grad=False, input_grad=True)
  if c.train_special_embeddings and lm.tie_embeddings:
    out.dense("head", rows, embed, 2, weight_grad=True, input_grad=True)


def step_flops(model_cfg: ml_collections.ConfigDict, batches: dict[str, tuple[int, int, int, int]]) -> Flops:
  """Model FLOPs of one training step: `batches` maps each dataset to (rows, image slots per
  row, images the vision tower encodes, text length). Unpacked, the tower encodes every slot;
  packed (train/image_buffers.py), the buffer plus one blank image, whose latents are also the
  ones the gated blocks project."""
  out = Flops()
  for rows, slots, encoded, length in batches.values():
    vision_flops(model_cfg, encoded, out)
    resampler_flops(model_cfg, encoded, out)
    decoder_flops(model_cfg, rows, slots, length, out, projected=encoded)
  return out
