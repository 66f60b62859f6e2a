"""The shipped tiny tokenizer: OpenFlamingo's added-token ids, loading, deterministic rebuild."""
import filecmp
import os

import pytest
import transformers

from configs import tiny
from flamingo_jax.data import build_tiny_tokenizer, tokenizer


def test_ids_are_the_ones_the_tiny_config_hard_codes(tok):
  cfg = tiny.get_config()
  ids = tokenizer.special_ids(tok)
  assert (ids["eoc"], ids["media"], ids["pad"]) == (509, 510, 511)
  assert (ids["eoc"], ids["media"], ids["pad"]) == (cfg.model.eoc_token_id, cfg.model.media_token_id,
                                                    cfg.model.pad_token_id)
  assert len(tok) == 512 == cfg.model.lm.vocab_size
  assert tok.eos_token == tok.bos_token == "<|endoftext|>" and ids["eos"] == 0
  assert tok.extra_special_tokens == ["<|endofchunk|>", "<image>"]  # v5 name of additional_special_tokens
  assert isinstance(tok, transformers.PreTrainedTokenizerFast)


def test_autotokenizer_loads_the_directory(tokenizer_dir):
  t = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  assert len(t) == 509 and t.convert_tokens_to_ids("<|endoftext|>") == 0


def test_existing_pad_token_is_kept(tmp_path, tokenizer_dir):
  t = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  t.add_special_tokens({"pad_token": "<|endoftext|>"})
  t.save_pretrained(tmp_path)
  t = tokenizer.load_tokenizer(str(tmp_path))
  assert t.pad_token_id == 0 and len(t) == 511


def test_rebuild_is_byte_identical(tmp_path, tokenizer_dir):
  build_tiny_tokenizer.build(str(tmp_path))
  for name in os.listdir(tokenizer_dir):
    assert filecmp.cmp(tmp_path / name, os.path.join(tokenizer_dir, name), shallow=False), name


def test_missing_directory_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    tokenizer.load_tokenizer(str(tmp_path / "nope"))
