"""A tiny Flamingo that trains in minutes on a laptop CPU, on generated synthetic shards.

  python -m flamingo_jax.train --config=configs/tiny.py --workdir=runs/tiny

Same code path as the released variants, with small numbers: a 64 px ViT, a 2-layer resampler
and a 2-layer MPT-style decoder with a gated block before every layer.
"""
from configs import common
from flamingo_jax import sweep


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, backend="cpu", family="mpt")
  c = common.base_config(a.backend, tiny=True)
  lm = common.lm_config(a.family, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                        mlp_hidden_size=256, max_positions=256, qk_layer_norm=True,
                        # The tiny LM is random, not pretrained: a unit-scale (frozen, tied) table
                        # lets the output logits reach a useful range.
                        embed_init_std=1.0,
                        # QK-LayerNorm MPT, as mpt-1b: its checkpoints use MosaicGPT's names.
                        checkpoint_naming="mosaicgpt" if a.family == "mpt" else "hf")
  c.model = common.model_config(lm, every_n_layers=1, train_special_embeddings=True)
  c.model.vision.update(image_size=64, patch_size=8, width=64, layers=2, heads=4, embed_dim=32)
  c.model.perceiver.update(depth=2, dim_head=16, heads=4, num_latents=8)
  c.model.xattn.update(dim_head=16, heads=4)
  # The project's own tiny BPE (flamingo_jax/assets/tiny_tokenizer): 509 base tokens, then
  # OpenFlamingo's added tokens in its order.
  c.model.eoc_token_id = 509
  c.model.media_token_id = 510
  c.model.pad_token_id = 511
  c.data.image_size = c.model.vision.image_size
  c.tokenizer_path = "flamingo_jax/assets/tiny_tokenizer"
  c.lm_path = ""
  common.apply_backend(c)
  if a.backend == "cpu":
    c.model.remat_policy = "none"
  return c.lock()


def get_sweep(arg: str | None = None):
  """Learning rate x cross-attention interval, a few minutes on a laptop at 300 steps:

    python -m flamingo_jax.sweep --config=configs/tiny.py --workdir=runs/sweep --config.train.num_steps=300
  """
  del arg
  return sweep.product({"optim.learning_rate": [1e-3, 3e-3], "model.xattn.every_n_layers": [1, 2]})
