"""Builds the PyTorch oracle in-process: open_flamingo's `Flamingo` on a tiny random open_clip CLIP
and a tiny random OPT, GPT-NeoX or MPT from transformers, plus the matching flamingo_jax config.

OpenFlamingo hard-codes its resampler (depth 6, 8 heads of 64, 64 latents) and gated blocks
(8 heads of 64), so the config uses those numbers; everything else is tiny.
"""
from __future__ import annotations

import ml_collections
import numpy as np
import torch

from configs import common

VOCAB = 100
EOC_ID, MEDIA_ID, PAD_ID = 97, 98, 99
VIS_WIDTH, IMAGE_SIZE, PATCH = 64, 32, 8
LM_DIM, LM_HEADS, LM_LAYERS = 64, 4, 4


def jax_config(family: str, every_n: int = 1, **lm_overrides) -> ml_collections.ConfigDict:
  """The flamingo_jax model config equal to `build_reference(family, every_n, ...)`."""
  lm = common.lm_config(family, vocab_size=VOCAB, hidden_size=LM_DIM, num_layers=LM_LAYERS,
                        num_heads=LM_HEADS, mlp_hidden_size=4 * LM_DIM, max_positions=128)
  if family == "mpt":
    lm.update(use_bias=False, norm_bias=False, tie_embeddings=True)
  elif family == "gpt_neox":
    lm.update(use_bias=True, norm_bias=True, tie_embeddings=False, activation="gelu")
  elif family == "opt":
    lm.update(use_bias=True, norm_bias=True, tie_embeddings=True, activation="relu")
  lm.update(lm_overrides)
  m = common.model_config(lm, every_n, train_special_embeddings=True)
  m.vision.update(image_size=IMAGE_SIZE, patch_size=PATCH, width=VIS_WIDTH, layers=2,
                  heads=VIS_WIDTH // 16, embed_dim=32)
  m.update(eoc_token_id=EOC_ID, media_token_id=MEDIA_ID, pad_token_id=PAD_ID)
  return m


def _clip():
  from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
  vision = CLIPVisionCfg(layers=2, width=VIS_WIDTH, head_width=16, patch_size=PATCH,
                         image_size=IMAGE_SIZE)
  text = CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
  return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def build_lm(family: str, **kw) -> torch.nn.Module:
  """A tiny random HF causal LM of the family, in eager attention, fp32."""
  import transformers as tf
  if family == "opt":
    cfg = tf.OPTConfig(vocab_size=VOCAB, hidden_size=LM_DIM, num_hidden_layers=LM_LAYERS,
                       ffn_dim=4 * LM_DIM, num_attention_heads=LM_HEADS, max_position_embeddings=128,
                       word_embed_proj_dim=LM_DIM, pad_token_id=PAD_ID, **kw)
    model = tf.OPTForCausalLM(cfg)
  elif family == "gpt_neox":
    kw.setdefault("use_parallel_residual", False)  # jax_config's default (HF's is True)
    cfg = tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=LM_DIM, num_hidden_layers=LM_LAYERS,
                           num_attention_heads=LM_HEADS, intermediate_size=4 * LM_DIM,
                           max_position_embeddings=128, hidden_act="gelu", **kw)
    model = tf.GPTNeoXForCausalLM(cfg)
  elif family == "mpt":
    cfg = tf.MptConfig(d_model=LM_DIM, n_heads=LM_HEADS, n_layers=LM_LAYERS, expansion_ratio=4,
                       max_seq_len=128, vocab_size=VOCAB, **kw)
    model = tf.MptForCausalLM(cfg)
  else:
    raise ValueError(family)
  model.config._attn_implementation = "eager"
  return model.eval()


def perturb_(module: torch.nn.Module, seed: int = 0, gate: float = 0.7) -> None:
  """Moves every 1-D parameter (LayerNorms, biases) off its init and opens the gates.

  A LayerNorm at init is the identity, which would hide a missing or misplaced norm.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith("_gate"):
        p.fill_(gate)
      elif p.ndim == 1 and p.numel() > 1:
        base = 1.0 if name.endswith("weight") else 0.0
        p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
      else:
        p.add_(0.02 * torch.randn(p.shape, generator=g))


def build_reference(family: str, every_n: int = 1, seed: int = 0, **lm_kw):
  """open_flamingo's Flamingo on tiny random towers, perturbed, in eval mode."""
  from open_flamingo.src.flamingo import Flamingo
  from open_flamingo.src.flamingo_lm import FlamingoLMMixin
  from open_flamingo.src.utils import extend_instance
  from flamingo_jax.weights.names import DECODER_ATTR

  torch.manual_seed(seed)
  clip = _clip()
  clip.visual.output_tokens = True
  lm = build_lm(family, **lm_kw)
  extend_instance(lm, FlamingoLMMixin)
  lm.set_decoder_layers_attr_name(DECODER_ATTR[family])
  model = Flamingo(clip, lm, EOC_ID, MEDIA_ID, vis_dim=VIS_WIDTH, cross_attn_every_n_layers=every_n)
  perturb_(model, seed)
  return model.eval()


def state_dict_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def sample_batch(rng: np.random.Generator, batch: int = 3, length: int = 16, images: int = 3):
  """Interleaved text with several images per row, left padding, an image as the first token and
  text before the first image, plus channel-last images."""
  ids = rng.integers(1, EOC_ID, size=(batch, length))
  mask = np.ones((batch, length), np.int64)
  # Row 0: starts with <image>; three images.
  ids[0, [0, 6, 11]] = MEDIA_ID
  ids[0, [5, 10]] = EOC_ID
  # Row 1: left padding, text before its first image, two images.
  ids[1, :4] = PAD_ID
  mask[1, :4] = 0
  ids[1, [7, 12]] = MEDIA_ID
  ids[1, 11] = EOC_ID
  # Row 2 (if any): one image late in the row.
  if batch > 2:
    ids[2, 9] = MEDIA_ID
  vision = rng.normal(size=(batch, images, 1, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  return vision, ids, mask


def to_torch_images(vision: np.ndarray) -> torch.Tensor:
  """(B, T, F, H, W, 3) -> the reference's (B, T, F, 3, H, W)."""
  return torch.from_numpy(np.ascontiguousarray(vision.transpose(0, 1, 2, 5, 3, 4)))
