"""Shared fixtures: one set of synthetic shards and the tiny tokenizer for all data tests."""
import os

import pytest

from configs import data as data_config
from flamingo_jax.data import synthetic, tokenizer

TOKENIZER_DIR = os.path.join(os.path.dirname(tokenizer.__file__), "..", "assets", "tiny_tokenizer")


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("shards"))
  synthetic.write_shards(out, laion_shards=2, mmc4_shards=2, samples_per_shard=24, seed=0)
  return out


@pytest.fixture(scope="session")
def tokenizer_dir():
  return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tok():
  return tokenizer.load_tokenizer(TOKENIZER_DIR)


@pytest.fixture
def make_cfg(shards):
  """The tiny data config on the test shards, with small batches."""
  def make(seed=0, workers=0):
    c = data_config.get_data_config(tiny=True)
    c.update(synthetic_dir="", seed=seed, workers=workers)
    c.laion.update(shards=os.path.join(shards, "laion-*.tar"), batch_size=4)
    c.mmc4.update(shards=os.path.join(shards, "mmc4-*.tar"), batch_size=2)
    return c
  return make
