"""WebDataset tar shards -> ArrayRecord: the same samples, the same batches, and a safe converter."""
import os
import subprocess
import sys

import pytest

from flamingo_jax.data import array_record, pipeline
from flamingo_jax.data.tar_source import ShardError, TarShardSource
from tests.data.batches import assert_same_batches


@pytest.fixture(scope="module")
def converted(shards, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("array_record"))
  tars = sorted(os.path.join(shards, f) for f in os.listdir(shards) if f.endswith(".tar"))
  counts = array_record.convert(tars, out, progress=False)
  return out, tars, counts


def test_same_samples_in_the_same_order(converted):
  out, tars, counts = converted
  assert counts["shards"] == len(tars) and counts["already_converted"] == 0
  for tar in tars:
    ours = array_record.ArrayRecordSource([array_record.output_path(tar, out)])
    source = TarShardSource([tar])
    assert len(ours) == len(source) > 0
    for i in range(len(source)):
      want = {k: v for k, v in source[i].items() if k != "__shard__"}
      assert ours[i] == want


def test_pipeline_gives_the_same_batches_and_skips(converted, make_cfg, tok):
  out, _, _ = converted
  tar_cfg, ar_cfg = make_cfg(), make_cfg()
  for name in ("laion", "mmc4"):
    ar_cfg[name].shards = os.path.join(out, f"{name}-*.array_record")
  tar_iters, tar_skips = pipeline.make_train_iterators(tar_cfg, tok)
  ar_iters, ar_skips = pipeline.make_train_iterators(ar_cfg, tok)
  assert_same_batches(pipeline.first_batches(tar_iters, 4), pipeline.first_batches(ar_iters, 4))
  assert ar_skips.counts == tar_skips.counts and sum(ar_skips.counts.values()) > 0


def test_a_rerun_resumes_and_bad_input_is_named(converted, shards, tmp_path):
  out, tars, _ = converted
  assert array_record.convert(tars, out, progress=False)["already_converted"] == len(tars)
  bad = tmp_path / "broken.tar"
  bad.write_bytes(b"not a tar" * 100)
  with pytest.raises(ShardError, match="broken.tar"):
    array_record.convert([str(bad)], str(tmp_path / "out"), progress=False)
  assert os.listdir(tmp_path / "out") == []  # nothing half-written
  with pytest.raises(ValueError, match="all tar or all ArrayRecord"):
    pipeline.open_source([tars[0], array_record.output_path(tars[0], out)])
  with pytest.raises(FileNotFoundError, match="nowhere"):
    array_record.ArrayRecordSource([str(tmp_path / "nowhere.array_record")])


def test_undecodable_record_becomes_a_counted_skip(tok, make_cfg, tmp_path):
  from array_record.python import array_record_module
  path = str(tmp_path / "laion-00000.array_record")
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for _ in range(4):
    writer.write(b"\xc1 garbage, not msgpack")
  writer.close()
  assert array_record.ArrayRecordSource([path])[0]["__error__"] == "unreadable_record"
  cfg = make_cfg()
  cfg.laion.shards = path
  cfg.max_skip_ratio = 0.5
  counter = pipeline.SkipCounter()
  with pytest.raises(ValueError, match="skipped|filtered"):
    next(iter(pipeline.make_dataset("laion", cfg, tok, counter)))
  assert counter.counts["laion/unreadable_record"] >= 1, counter.counts


def test_command_line(shards, tmp_path):
  out = tmp_path / "cli"
  result = subprocess.run([sys.executable, "-m", "flamingo_jax.data.array_record",
                           f"--shards={os.path.join(shards, 'laion-*.tar')}", f"--out_dir={out}"],
                          capture_output=True, text=True, check=True)
  assert "2 shards converted" in result.stdout, result.stdout
  assert sorted(os.listdir(out)) == ["laion-00000.array_record", "laion-00001.array_record"]
