"""MPT-1B (MosaicGPT, mpt-1b-redpajama-200b) has no PyTorch oracle in transformers: its attention
layer-norms q and k over the whole d_model before splitting heads. This tests our block against a
direct PyTorch transcription of that architecture as its config and the spec describe: pre-LN
block, fused Wqkv split into contiguous q|k|v thirds, q_ln/k_ln over d_model, ALiBi
(alibi_bias_max 8), causal softmax with scale d_head^-0.5, out_proj, then LN -> up -> GELU -> down."""
import math

import jax.numpy as jnp
import numpy as np
import torch

from flamingo_jax.models.decoders.block import DecoderBlock
from flamingo_jax.models.decoders import positions as pos
from oracle import reference_models as ref

D, H, L = 64, 4, 10


def _torch_alibi(heads, length, bias_max=8):
  m = torch.arange(1, heads + 1, dtype=torch.float32) * (bias_max / heads)
  rel = torch.arange(1 - length, 1, dtype=torch.float32).view(1, 1, 1, length)
  return rel * (1.0 / 2 ** m.view(1, heads, 1, 1))


def _torch_block(x, w, mask):
  ln = lambda t, name: torch.nn.functional.layer_norm(t, (D,), w[f"{name}.weight"], w[f"{name}.bias"])
  h = ln(x, "ln_1")
  qkv = h @ w["attn.Wqkv.weight"].T
  q, k, v = qkv.split(D, dim=-1)
  q, k = ln(q, "attn.q_ln"), ln(k, "attn.k_ln")
  split = lambda t: t.view(t.shape[0], L, H, D // H).transpose(1, 2)
  q, k, v = split(q), split(k), split(v)
  scores = q @ k.transpose(-1, -2) / math.sqrt(D // H) + _torch_alibi(H, L)
  causal = torch.ones(L, L, dtype=torch.bool).tril()
  allowed = causal[None, None] & mask[:, None, None, :].bool()
  scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
  out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], L, D)
  x = x + out @ w["attn.out_proj.weight"].T
  h = ln(x, "ln_2")
  return x + torch.nn.functional.gelu(h @ w["mlp.mlp_up.weight"].T) @ w["mlp.mlp_down.weight"].T


def test_mosaicgpt_block_with_qk_layer_norm():
  rng = np.random.default_rng(0)
  g = lambda *s: torch.tensor(rng.normal(size=s) * 0.2, dtype=torch.float32)
  w = {"attn.Wqkv.weight": g(3 * D, D), "attn.out_proj.weight": g(D, D),
       "mlp.mlp_up.weight": g(4 * D, D), "mlp.mlp_down.weight": g(D, 4 * D)}
  for n in ("ln_1", "ln_2", "attn.q_ln", "attn.k_ln"):
    w[f"{n}.weight"], w[f"{n}.bias"] = 1 + g(D), g(D)
  x = rng.normal(size=(2, L, D)).astype(np.float32)
  mask = np.ones((2, L), np.int32)
  mask[1, :3] = 0
  with torch.no_grad():
    theirs = _torch_block(torch.from_numpy(x), w, torch.from_numpy(mask)).numpy()

  cfg = ref.jax_config("mpt", 1, qk_layer_norm=True, norm_bias=True, checkpoint_naming="mosaicgpt",
                       hidden_size=D, num_heads=H).lm
  from flamingo_jax.weights import names, state_dict as sd_lib
  sd = {f"transformer.blocks.0.{k}": v.numpy() for k, v in w.items()}
  entries = [e for e in names.lm_entries(cfg) if e.torch_keys[0].startswith("transformer.blocks.0.")]
  variables = sd_lib.to_flax(sd, entries)["frozen"]["lm"]["blocks_0"]
  ours, _ = DecoderBlock(cfg).apply({"frozen": variables}, jnp.asarray(x),
                                    pos.causal_allowed(jnp.asarray(mask)), jnp.zeros((2, L), jnp.int32))
  valid = mask.astype(bool)
  assert np.abs(np.asarray(ours) - theirs)[valid].max() < 1e-4
  # The q/k norms matter here (their weights are off the identity).
  w["attn.q_ln.weight"] = torch.ones(D)
  with torch.no_grad():
    changed = _torch_block(torch.from_numpy(x), w, torch.from_numpy(mask)).numpy()
  assert np.abs(changed - theirs)[valid].max() > 1e-3
