"""Builds the tiny config's tokenizer: a byte-level BPE trained on the synthetic corpus, with
`<|endoftext|>` as id 0 (EOS, as GPT-NeoX) and 509 tokens in all, so that OpenFlamingo's added
tokens get ids 509, 510, 511.

  python -m flamingo_jax.data.build_tiny_tokenizer [--out DIR]

Training is deterministic: rebuilding gives the committed files byte for byte (tested).
"""
from __future__ import annotations

import argparse
import os

import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from flamingo_jax.data import synthetic

BASE_VOCAB = 509
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "tiny_tokenizer")


def build(out: str = DEFAULT_DIR) -> str:
  """Trains and saves the tokenizer; returns its directory."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=BASE_VOCAB, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(synthetic.corpus(), trainer)
  if tok.get_vocab_size() != BASE_VOCAB:
    raise RuntimeError(f"BPE produced {tok.get_vocab_size()} tokens, expected {BASE_VOCAB}")
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                              bos_token="<|endoftext|>", unk_token="<|endoftext|>")
  os.makedirs(out, exist_ok=True)
  fast.save_pretrained(out)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description="Build the tiny config's BPE tokenizer.")
  parser.add_argument("--out", default=DEFAULT_DIR)
  print(f"saved to {build(parser.parse_args().out)}")


if __name__ == "__main__":
  main()
