"""gs:// shards through the real clients (TensorFlow's for tar shards, array_record's own for
ArrayRecord), served by a local emulator (tests/fake_gcs.py): the same batches as from local disk,
in-process and in Grain worker processes; tar -> ArrayRecord conversion into a bucket; a missing
or broken remote shard named in the error."""
import os
import shutil

import pytest

from flamingo_jax.data import array_record, pipeline, shards as shards_lib
from flamingo_jax.data.tar_source import ShardError, TarShardSource
from tests.data.batches import assert_same_batches


@pytest.fixture(scope="module")
def bucket_root(shards, tmp_path_factory):
  """The test shards as objects of gs://flamingo-test/data/."""
  root = tmp_path_factory.mktemp("gcs")
  shutil.copytree(shards, root / "flamingo-test" / "data")
  (root / "flamingo-test" / "data" / "laion-broken.tar").write_bytes(b"not a tar file" * 64)
  return str(root)


@pytest.fixture
def gcs(bucket_root, serve_gcs):
  return serve_gcs(bucket_root, linger=True)


def _on_gcs(cfg):
  cfg.laion.shards = "gs://flamingo-test/data/laion-0*.tar"
  cfg.mmc4.shards = "gs://flamingo-test/data/mmc4-{00000..00001}.tar"
  return cfg


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_gcs_shards_give_the_local_batches(gcs, make_cfg, tok, workers):
  local = pipeline.first_batches(pipeline.make_train_iterators(make_cfg(), tok)[0], 2)
  remote = pipeline.first_batches(
      pipeline.make_train_iterators(_on_gcs(make_cfg(workers=workers)), tok)[0], 2)
  assert_same_batches(local, remote)
  assert gcs.bytes_served > 0  # the emulator served the reads (worker processes' too)


def test_array_record_conversion_to_and_reading_from_gcs(gcs, make_cfg, tok):
  tars = shards_lib.expand_shards("gs://flamingo-test/data/laion-0*.tar,gs://flamingo-test/data/mmc4-0*.tar")
  counts = array_record.convert(tars, "gs://flamingo-test/ar", progress=False)
  assert counts["shards"] == len(tars) == 4 and counts["samples"] > 0
  assert array_record.convert(tars, "gs://flamingo-test/ar", progress=False)["already_converted"] == 4
  local = pipeline.first_batches(pipeline.make_train_iterators(make_cfg(), tok)[0], 2)
  cfg = make_cfg()
  for name in ("laion", "mmc4"):
    cfg[name].shards = f"gs://flamingo-test/ar/{name}-*.array_record"
  assert_same_batches(local, pipeline.first_batches(pipeline.make_train_iterators(cfg, tok)[0], 2))


def test_gcs_glob_and_errors_name_the_object(gcs, shards):
  want = sorted(f"gs://flamingo-test/data/{n}" for n in os.listdir(shards) if n.startswith("laion-"))
  assert shards_lib.expand_shards("gs://flamingo-test/data/laion-0*.tar") == want
  with pytest.raises(FileNotFoundError, match="nothing"):
    shards_lib.expand_shards("gs://flamingo-test/data/nothing-*.tar")
  with pytest.raises(ShardError, match="gs://flamingo-test/data/missing.tar"):
    TarShardSource(["gs://flamingo-test/data/missing.tar"])
  with pytest.raises(ShardError, match="gs://flamingo-test/data/laion-broken.tar"):
    TarShardSource(["gs://flamingo-test/data/laion-broken.tar"])
