"""Builds the PyTorch oracle in-process: open_flamingo's `Flamingo` on a tiny random open_clip CLIP
and a tiny random OPT, GPT-NeoX or MPT from transformers, plus the matching flamingo_jax config.

OpenFlamingo hard-codes its resampler (depth 6, 8 heads of 64, 64 latents) and gated blocks
(8 heads of 64), so the config uses those numbers; everything else is tiny.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
import torch

from configs import common


@dataclasses.dataclass(frozen=True)
class Dims:
  """Tower sizes of an oracle model. The three added tokens are the last three ids."""
  vocab: int = 100
  vis_width: int = 64
  vis_layers: int = 2
  image_size: int = 32
  patch: int = 8
  lm_dim: int = 64
  lm_heads: int = 4
  lm_layers: int = 4
  max_positions: int = 128

  @property
  def special_ids(self) -> tuple[int, int, int]:
    """(<|endofchunk|>, <image>, pad) ids."""
    return self.vocab - 3, self.vocab - 2, self.vocab - 1


TINY = Dims()
# OpenFlamingo-3B's shapes (ViT-L/14 at 224 px, an MPT-1B-sized LM): for accelerator benchmarks.
OF_3B = Dims(vocab=50280, vis_width=1024, vis_layers=24, image_size=224, patch=14, lm_dim=2048,
             lm_heads=16, lm_layers=24, max_positions=2048)

# The 224 px CPU benchmark's shapes: ViT 384 x 6 at 224 px (patch 14), LM 512 x 8.
CPU_224 = Dims(vocab=50280, vis_width=384, vis_layers=6, image_size=224, patch=14, lm_dim=512,
               lm_heads=8, lm_layers=8, max_positions=2048)



def dims_of(model_cfg: ml_collections.ConfigDict) -> Dims:
  """The oracle's sizes for a flamingo_jax model config (benchmarks on a config's shapes). The
  reference's resampler and gated blocks keep OpenFlamingo's fixed sizes, which are the released
  configs' sizes; its MLPs are 4x the LM width, as in every released LM."""
  m = model_cfg
  if (m.eoc_token_id, m.media_token_id, m.pad_token_id) != Dims(vocab=m.lm.vocab_size).special_ids:
    raise ValueError("the oracle puts <|endofchunk|>, <image> and pad last in the vocabulary; "
                     f"this config has ids {m.eoc_token_id}, {m.media_token_id}, {m.pad_token_id} "
                     f"of {m.lm.vocab_size}")
  return Dims(vocab=m.lm.vocab_size, vis_width=m.vision.width, vis_layers=m.vision.layers,
              image_size=m.vision.image_size, patch=m.vision.patch_size, lm_dim=m.lm.hidden_size,
              lm_heads=m.lm.num_heads, lm_layers=m.lm.num_layers, max_positions=m.lm.max_positions)


VOCAB = TINY.vocab
EOC_ID, MEDIA_ID, PAD_ID = TINY.special_ids
VIS_WIDTH, IMAGE_SIZE, PATCH = TINY.vis_width, TINY.image_size, TINY.patch
LM_DIM, LM_HEADS, LM_LAYERS = TINY.lm_dim, TINY.lm_heads, TINY.lm_layers


def jax_config(family: str, every_n: int = 1, dims: Dims = TINY,
               **lm_overrides) -> ml_collections.ConfigDict:
  """The flamingo_jax model config equal to `build_reference(family, every_n, dims=dims, ...)`."""
  lm = common.lm_config(family, vocab_size=dims.vocab, hidden_size=dims.lm_dim,
                        num_layers=dims.lm_layers, num_heads=dims.lm_heads,
                        mlp_hidden_size=4 * dims.lm_dim, max_positions=dims.max_positions)
  lm.update(lm_overrides)  # the family's own flags come from its record (models/families.py)
  m = common.model_config(lm, every_n, train_special_embeddings=True)
  head_width = 16 if dims.vis_width <= 256 else 64
  m.vision.update(image_size=dims.image_size, patch_size=dims.patch, width=dims.vis_width,
                  layers=dims.vis_layers, heads=dims.vis_width // head_width, embed_dim=32)
  eoc, media, pad = dims.special_ids
  m.update(eoc_token_id=eoc, media_token_id=media, pad_token_id=pad)
  return m


def _clip(dims: Dims = TINY):
  from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
  head_width = 16 if dims.vis_width <= 256 else 64
  vision = CLIPVisionCfg(layers=dims.vis_layers, width=dims.vis_width, head_width=head_width,
                         patch_size=dims.patch, image_size=dims.image_size)
  text = CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
  return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def build_lm(family: str, dims: Dims = TINY, attn_implementation: str = "eager",
             **kw) -> torch.nn.Module:
  """A random HF causal LM of the family (tiny by default), fp32."""
  import transformers as tf
  d = dims
  if family == "opt":
    cfg = tf.OPTConfig(vocab_size=d.vocab, hidden_size=d.lm_dim, num_hidden_layers=d.lm_layers,
                       ffn_dim=4 * d.lm_dim, num_attention_heads=d.lm_heads,
                       max_position_embeddings=d.max_positions, word_embed_proj_dim=d.lm_dim,
                       pad_token_id=d.special_ids[2], **kw)
    model = tf.OPTForCausalLM(cfg)
  elif family == "gpt_neox":
    kw.setdefault("use_parallel_residual", False)  # jax_config's default (HF's is True)
    kw.setdefault("rotary_pct", 1.0)  # jax_config's default, RedPajama-INCITE's (HF's is 0.25)
    cfg = tf.GPTNeoXConfig(vocab_size=d.vocab, hidden_size=d.lm_dim, num_hidden_layers=d.lm_layers,
                           num_attention_heads=d.lm_heads, intermediate_size=4 * d.lm_dim,
                           max_position_embeddings=d.max_positions, hidden_act="gelu", **kw)
    model = tf.GPTNeoXForCausalLM(cfg)
  elif family == "mpt":
    cfg = tf.MptConfig(d_model=d.lm_dim, n_heads=d.lm_heads, n_layers=d.lm_layers,
                       expansion_ratio=4, max_seq_len=d.max_positions, vocab_size=d.vocab, **kw)
    model = tf.MptForCausalLM(cfg)
  else:
    raise ValueError(family)
  model.config._attn_implementation = attn_implementation
  return model.eval()


def perturb_(module: torch.nn.Module, seed: int = 0, gate: float = 0.7) -> None:
  """Moves every 1-D parameter (LayerNorms, biases) off its init and opens the gates.

  A LayerNorm at init is the identity, which would hide a missing or misplaced norm.
  """
  device = next(module.parameters()).device
  g = torch.Generator(device).manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith("_gate"):
        p.fill_(gate)
      elif p.ndim == 1 and p.numel() > 1:
        base = 1.0 if name.endswith("weight") else 0.0
        p.copy_(base + 0.2 * torch.randn(p.shape, generator=g, device=device))
      else:
        p.add_(0.02 * torch.randn(p.shape, generator=g, device=device))


def build_reference(family: str, every_n: int = 1, seed: int = 0, dims: Dims = TINY,
                    attn_implementation: str = "eager", **lm_kw):
  """open_flamingo's Flamingo on random towers (tiny by default), perturbed, in eval mode."""
  from open_flamingo.src.flamingo import Flamingo
  from open_flamingo.src.flamingo_lm import FlamingoLMMixin
  from open_flamingo.src.utils import extend_instance
  from flamingo_jax.weights.names import decoder_attr

  torch.manual_seed(seed)
  clip = _clip(dims)
  clip.visual.output_tokens = True
  lm = build_lm(family, dims, attn_implementation, **lm_kw)
  extend_instance(lm, FlamingoLMMixin)
  lm.set_decoder_layers_attr_name(decoder_attr(family))
  eoc, media, _ = dims.special_ids
  model = Flamingo(clip, lm, eoc, media, vis_dim=dims.vis_width, cross_attn_every_n_layers=every_n)
  perturb_(model, seed)
  return model.eval()


def state_dict_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def sample_batch(rng: np.random.Generator, batch: int = 3, length: int = 16, images: int = 3,
                 dims: Dims = TINY):
  """Interleaved text with several images per row, left padding, an image as the first token and
  text before the first image, plus channel-last images."""
  eoc, media, pad = dims.special_ids
  ids = rng.integers(1, eoc, size=(batch, length))
  mask = np.ones((batch, length), np.int64)
  # Row 0: starts with <image>; three images.
  ids[0, [0, 6, 11]] = media
  ids[0, [5, 10]] = eoc
  # Row 1: left padding, text before its first image, two images.
  ids[1, :4] = pad
  mask[1, :4] = 0
  ids[1, [7, 12]] = media
  ids[1, 11] = eoc
  # Row 2 (if any): one image late in the row.
  if batch > 2:
    ids[2, 9] = media
  vision = rng.normal(size=(batch, images, 1, dims.image_size, dims.image_size, 3)).astype(np.float32)
  return vision, ids, mask


def to_torch_images(vision: np.ndarray) -> torch.Tensor:
  """(B, T, F, H, W, 3) -> the reference's (B, T, F, 3, H, W)."""
  return torch.from_numpy(np.ascontiguousarray(vision.transpose(0, 1, 2, 5, 3, 4)))
