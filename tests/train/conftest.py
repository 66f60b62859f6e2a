"""Synthetic LAION/MMC4 shards shared by the training tests (read only), and a gs:// bucket."""
import os

import pytest

from flamingo_jax.data import synthetic


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("shards"))
  synthetic.write_shards(out, laion_shards=2, mmc4_shards=2, samples_per_shard=32, seed=0)
  return out


@pytest.fixture
def gcs_bucket(tmp_path, serve_gcs):
  """An empty gs://bucket for this test, kept on disk under tmp_path/gcs/bucket."""
  os.makedirs(tmp_path / "gcs" / "bucket")
  return serve_gcs(str(tmp_path / "gcs"))
