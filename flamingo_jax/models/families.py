"""The decoder-LM families, one record each: everything the rest of the code needs to know about a
family lives here (position scheme, checkpoint names, Hugging Face model types, default flags).

Adding a family is a new `Family` record in `FAMILIES`, plus decoder-block code if its layer does
something `decoders/block.py` cannot yet express. Config defaults (`configs/common.lm_config`),
the decoder (`decoders/block.py`, `decoders/lm.py`), the checkpoint name maps
(`weights/names.py`), the importer (`weights/convert.py`) and the test oracle
(`oracle/reference_models.py`) all read these records.

Layer names are relative to `{decoder_attr}.{i}`; model names are absolute keys of the HF model.
Entries a family's layer lacks are simply absent (OPT's q/k/v projections are three tensors,
described by `qkv_layout`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Naming:
  """One checkpoint naming of a family's tensors (module paths without `.weight`/`.bias`)."""
  layer: Mapping[str, str]  # norm_1, norm_2, qkv, out, up, down [, q_norm, k_norm]
  model: Mapping[str, str]  # embed, final_norm [, lm_head, pos_embed, project_in, project_out]


@dataclasses.dataclass(frozen=True)
class Family:
  """One LM family as OpenFlamingo wraps it."""
  name: str
  position_scheme: str             # 'alibi' | 'rotary' | 'learned'
  hf_model_types: frozenset[str]   # config.json `model_type`s its checkpoints may carry
  base_model_prefix: str           # what files saved from the bare base model lack
  decoder_attr: str                # where the layers live (OpenFlamingo's decoder_layers_attr_name)
  qkv_layout: str                  # 'thirds' ([q; k; v] rows) | 'head_interleaved' | 'separate'
  namings: Mapping[str, Naming]    # lm.checkpoint_naming -> names
  defaults: Mapping[str, Any]      # lm config flags of the family's released models


_MPT_MODEL = dict(embed="transformer.wte", final_norm="transformer.norm_f")

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(
        name="mpt", position_scheme="alibi", hf_model_types=frozenset({"mpt", "mosaic_gpt"}),
        base_model_prefix="transformer.", decoder_attr="transformer.blocks", qkv_layout="thirds",
        namings={
            "hf": Naming(dict(norm_1="norm_1", norm_2="norm_2", qkv="attn.Wqkv", out="attn.out_proj",
                              up="ffn.up_proj", down="ffn.down_proj"), _MPT_MODEL),
            # The trust_remote_code MosaicGPT of mpt-1b-redpajama-200b.
            "mosaicgpt": Naming(dict(norm_1="ln_1", norm_2="ln_2", qkv="attn.Wqkv", out="attn.out_proj",
                                     up="mlp.mlp_up", down="mlp.mlp_down", q_norm="attn.q_ln",
                                     k_norm="attn.k_ln"),
                                dict(embed="transformer.wte", final_norm="transformer.ln_f")),
        },
        defaults=dict(use_bias=False, norm_bias=False, tie_embeddings=True, activation="gelu")),
    Family(
        name="gpt_neox", position_scheme="rotary", hf_model_types=frozenset({"gpt_neox"}),
        base_model_prefix="gpt_neox.", decoder_attr="gpt_neox.layers", qkv_layout="head_interleaved",
        namings={"hf": Naming(
            dict(norm_1="input_layernorm", norm_2="post_attention_layernorm",
                 qkv="attention.query_key_value", out="attention.dense", up="mlp.dense_h_to_4h",
                 down="mlp.dense_4h_to_h"),
            dict(embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm",
                 lm_head="embed_out"))},
        defaults=dict(use_bias=True, norm_bias=True, tie_embeddings=False, activation="gelu")),
    Family(
        name="opt", position_scheme="learned", hf_model_types=frozenset({"opt"}),
        base_model_prefix="model.", decoder_attr="model.decoder.layers", qkv_layout="separate",
        namings={"hf": Naming(
            dict(norm_1="self_attn_layer_norm", norm_2="final_layer_norm", out="self_attn.out_proj",
                 up="fc1", down="fc2", q="self_attn.q_proj", k="self_attn.k_proj",
                 v="self_attn.v_proj"),
            dict(embed="model.decoder.embed_tokens", final_norm="model.decoder.final_layer_norm",
                 pos_embed="model.decoder.embed_positions", project_in="model.decoder.project_in",
                 project_out="model.decoder.project_out"))},
        defaults=dict(use_bias=True, norm_bias=True, tie_embeddings=True, activation="relu")),
)}


def get_family(name: str) -> Family:
  """The record of LM family `name`; a one-line error naming the known ones otherwise."""
  if name not in FAMILIES:
    raise ValueError(f"Unknown LM family {name!r} (model.lm.family); known: {', '.join(FAMILIES)}")
  return FAMILIES[name]


def naming(lm) -> Naming:
  """The checkpoint names an LM config (`family`, `checkpoint_naming`) uses."""
  family = get_family(lm.family)
  if lm.checkpoint_naming not in family.namings:
    raise ValueError(f"model.lm.checkpoint_naming={lm.checkpoint_naming!r} is not a naming of "
                     f"{family.name}; known: {', '.join(family.namings)}")
  return family.namings[lm.checkpoint_naming]
