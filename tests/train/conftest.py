"""Synthetic LAION/MMC4 shards shared by the training tests (read only), and a gs:// bucket."""
import os

import pytest

from flamingo_jax.data import synthetic
from tests.fake_gcs import FakeGcs


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("shards"))
  synthetic.write_shards(out, laion_shards=2, mmc4_shards=2, samples_per_shard=32, seed=0)
  return out


@pytest.fixture
def gcs_bucket(tmp_path, monkeypatch):
  """An empty gs://bucket served by the local GCS emulator for this test (its variables are set
  in os.environ, so subprocesses started with it reach the bucket too); yields the emulator."""
  os.makedirs(tmp_path / "gcs" / "bucket")
  with FakeGcs(str(tmp_path / "gcs"), str(tmp_path)) as gcs:
    for key, value in gcs.env().items():
      monkeypatch.setenv(key, value)
    yield gcs
