"""Writes the files a user starts from, in their real formats, from an in-process reference
Flamingo: a Hugging Face LM directory, an open_clip/OpenAI CLIP weights file and an OpenFlamingo
checkpoint.pt (released style, or a training checkpoint dict)."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

from flamingo_jax.models import families
from flamingo_jax.weights import names

MODEL_TYPES = {"opt": "opt", "gpt_neox": "gpt_neox", "mpt": "mpt"}


def lm_state_dict(model, family: str, naming: str = "hf", qk_layer_norm: bool = False,
                  seed: int = 0) -> dict[str, torch.Tensor]:
  """The reference's LM weights in the HF LM's own naming (or MosaicGPT's, by renaming an HF
  MPT's keys with the provisional map, plus random QK-LayerNorm weights if asked)."""
  sd = {names.hf_lm_key(k, family): v.clone() for k, v in model.state_dict().items()
        if k.startswith("lang_encoder.") and "gated_cross_attn" not in k and "old_decoder_blocks" not in k}
  if naming == "mosaicgpt":
    mpt = families.get_family("mpt")
    hf, mosaic = mpt.namings["hf"].layer, mpt.namings["mosaicgpt"].layer
    for part in ("norm_1", "norm_2", "up", "down"):
      sd = {k.replace(f".{hf[part]}.", f".{mosaic[part]}."): v for k, v in sd.items()}
    sd = {k.replace("transformer.norm_f.", "transformer.ln_f."): v for k, v in sd.items()}
    if qk_layer_norm:
      g = torch.Generator().manual_seed(seed)
      dim = sd["transformer.wte.weight"].shape[1]
      for i in range({int(k.split(".")[2]) for k in sd if k.startswith("transformer.blocks.")}.__len__()):
        for n in ("q_ln", "k_ln"):
          sd[f"transformer.blocks.{i}.attn.{n}.weight"] = 1 + 0.2 * torch.randn(dim, generator=g)
  return sd


def write_lm_dir(path: str, sd: dict[str, torch.Tensor], model_type: str, *, extra_rows: int = 0,
                 dtype: torch.dtype | None = None, fmt: str = "safetensors",
                 strip_prefix: str = "") -> dict[str, torch.Tensor]:
  """config.json + one weights file, named as on the Hub: tied heads not saved, GPT-NeoX's head
  `embed_out`, and `strip_prefix` removed (facebook/opt-* files say `decoder.*`, not
  `model.decoder.*`). `extra_rows` pads the vocabulary tables, as the released LMs' 50432 rows
  exceed len(tokenizer). Returns the state dict as written."""
  os.makedirs(path)
  out = {}
  for k, v in sd.items():
    if k == "lm_head.weight":
      if model_type != "gpt_neox":
        continue
      k = "embed_out.weight"
    if extra_rows and k.endswith(("wte.weight", "embed_in.weight", "embed_tokens.weight", "embed_out.weight")):
      v = torch.cat([v, torch.randn(extra_rows, v.shape[1])])
    out[k.removeprefix(strip_prefix)] = (v.to(dtype) if dtype else v).contiguous()
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"model_type": model_type}, f)
  if fmt == "safetensors":
    save_file(out, os.path.join(path, "model.safetensors"))
  else:
    torch.save(out, os.path.join(path, "pytorch_model.bin"))
  return out


def clip_state_dict(model) -> dict[str, torch.Tensor]:
  return {f"visual.{k.removeprefix('vision_encoder.')}": v.clone() for k, v in model.state_dict().items()
          if k.startswith("vision_encoder.")}


def write_clip(path: str, model, torchscript: bool = False, dtype=None) -> dict[str, torch.Tensor]:
  """A CLIP weights file whose `visual.*` tensors are the reference's vision tower: a state dict
  (with text-tower tensors the importer must skip), or a TorchScript archive as OpenAI ships."""
  sd = {k: (v.to(dtype) if dtype else v) for k, v in clip_state_dict(model).items()}
  if torchscript:
    torch.jit.save(torch.jit.script(_ScriptedClip(sd)), path)
  else:
    torch.save({**sd, "token_embedding.weight": torch.zeros(4, 2), "logit_scale": torch.ones([])}, path)
  return sd


class _ScriptedClip(torch.nn.Module):
  """A scriptable module whose state dict is `sd` plus `logit_scale`, like OpenAI's archives."""

  def __init__(self, sd):
    super().__init__()
    for name, value in sd.items():
      parent = self
      *path, leaf = name.split(".")
      for part in path:
        if not hasattr(parent, part):
          parent.add_module(part, torch.nn.Module())
        parent = getattr(parent, part)
      parent.register_parameter(leaf, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
    self.logit_scale = torch.nn.Parameter(torch.ones([]))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * self.logit_scale


def released_keys(model) -> set[str]:
  """The keys OpenFlamingo's training script keeps from the live model (spec 3.3): perceiver,
  gated blocks at their FlamingoLayer path, and the parameters with "embed" in the name or the
  trainable MPT table `wte`, minus the vision tower. (Under transformers 5 GPT-NeoX's embed_out is called lm_head.)"""
  keep = lambda n: not n.startswith("vision_encoder.") and (n.startswith("perceiver.") or "gated_cross_attn_layer." in n or "embed" in n
                    or n.endswith(".wte.weight") or n == "lang_encoder.lm_head.weight")
  tied = {n for n, p in model.named_parameters()}  # de-duplicated: the first name of a tied table
  return {n for n in tied if keep(n) and not (n == "lang_encoder.lm_head.weight" and _tied(model))}


def _tied(model) -> bool:
  head = getattr(model.lang_encoder, "lm_head", None)
  return head is not None and head.weight is model.lang_encoder.get_input_embeddings().weight


def write_openflamingo_pt(path: str, model, *, training_dict: bool = False) -> dict[str, torch.Tensor]:
  """A released-style checkpoint.pt (plain state dict), or a DDP/FSDP training checkpoint dict:
  `module.` prefixes, every weight of the model (LM and vision included, as FSDP saved), buffers
  and optimizer state. Returns the released-style state dict."""
  full = model.state_dict()
  sd = {k: full[k].clone() for k in released_keys(model)}
  if training_dict:
    everything = {f"module.{k}": v for k, v in full.items()}
    optim = {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    torch.save({"epoch": 3, "model_state_dict": everything, "optimizer_state_dict": optim,
                "lr_scheduler_state_dict": {"last_epoch": 7}}, path)
  else:
    torch.save(sd, path)
  return sd


def numpy_dict(sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
          for k, v in sd.items()}
