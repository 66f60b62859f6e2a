"""Tokenizers from local directories only, with OpenFlamingo's added tokens."""
from __future__ import annotations

import os

import transformers

EOC_TOKEN = "<|endofchunk|>"
MEDIA_TOKEN = "<image>"
PAD_TOKEN = "<PAD>"


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerFast:
  """Loads a local HF tokenizer and adds `<|endofchunk|>`, `<image>` (in that order) and, if it
  has none, the pad token `<PAD>`, exactly as OpenFlamingo's factory does."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Tokenizer directory not found: {path!r} (nothing is downloaded; "
                            "point tokenizer_path at a local copy)")
  tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  tok.add_special_tokens({"additional_special_tokens": [EOC_TOKEN, MEDIA_TOKEN]})
  if tok.pad_token is None:
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
  return tok


def special_ids(tok) -> dict[str, int]:
  """The ids OpenFlamingo derives: last id of encoding each special token (no BOS/EOS added)."""
  enc = lambda s: tok(s, add_special_tokens=False)["input_ids"][-1]
  return {"eoc": enc(EOC_TOKEN), "media": enc(MEDIA_TOKEN), "pad": tok.pad_token_id,
          "eos": tok.eos_token_id}


class TokenizerMismatchError(ValueError):
  """A tokenizer whose vocabulary size or special ids differ from the model config's."""


def check_tokenizer(tok, model_cfg, source: str) -> None:
  """The tokenizer (with OpenFlamingo's added tokens) has the config's vocabulary size and
  special-token ids; otherwise token ids and embedding rows would silently be off."""
  ids = special_ids(tok)
  problems = [] if len(tok) == model_cfg.lm.vocab_size else [
      f"len(tokenizer) = {len(tok)} but lm.vocab_size = {model_cfg.lm.vocab_size}"]
  for name, field in (("eoc", "eoc_token_id"), ("media", "media_token_id"), ("pad", "pad_token_id")):
    if ids[name] != model_cfg[field]:
      problems.append(f"the tokenizer's {name} id is {ids[name]} but {field} = {model_cfg[field]}")
  if problems:
    raise TokenizerMismatchError(f"Tokenizer {source} does not line up with the config (token ids "
                                 f"and embedding rows would be off): {'; '.join(problems)}")
