"""Synthetic shards through the Grain pipeline: the batch contract, determinism with and without
worker processes, exact resume, disjoint per-process reading, bad data counted or named."""
import io
import tarfile

import numpy as np
import pytest

from flamingo_jax.data import image_preprocess, pipeline, shards as shards_lib, tokenizer
from flamingo_jax.data.tar_source import ShardError, TarShardSource
from tests.data.batches import assert_same_batches


def test_batches_follow_the_contract(make_cfg, tok):
  cfg = make_cfg()
  iters, _ = pipeline.make_train_iterators(cfg, tok)
  b = pipeline.first_batches(iters)[0]
  size, ids = cfg.image_size, tokenizer.special_ids(tok)
  for name, n_img, length, batch in (("laion", 1, 16, 4), ("mmc4", 3, 48, 2)):
    x = b[name]
    assert x["images"].shape == (batch, n_img, 1, size, size, 3) and x["images"].dtype == np.uint8
    assert x["image_mask"].shape == (batch, n_img) and x["image_mask"].dtype == bool
    for key in ("input_ids", "attention_mask", "labels"):
      assert x[key].shape == (batch, length) and x[key].dtype == np.int32, key
    n_media = (x["input_ids"] == ids["media"]).sum(1)
    np.testing.assert_array_equal(n_media, x["image_mask"].sum(1))  # one slot per <image>
    assert np.all(np.abs(x["images"][x["image_mask"]]).sum((1, 2, 3, 4)) > 0)
    assert not np.any(x["images"][~x["image_mask"]])  # unused slots are zero
    pad = x["input_ids"] == ids["pad"]
    np.testing.assert_array_equal(pad, x["attention_mask"] == 0)
    assert np.all(x["labels"][pad] == -100) and np.all(x["labels"][x["input_ids"] == ids["media"]] == -100)


def test_same_seed_same_batches_whatever_the_workers(make_cfg, tok):
  a = pipeline.first_batches(pipeline.make_train_iterators(make_cfg(), tok)[0], 3)
  b = pipeline.first_batches(pipeline.make_train_iterators(make_cfg(workers=2), tok)[0], 3)
  assert_same_batches(a, b)
  c = pipeline.first_batches(pipeline.make_train_iterators(make_cfg(seed=1), tok)[0], 1)
  assert not np.array_equal(a[0]["laion"]["input_ids"], c[0]["laion"]["input_ids"])


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_iterator_continues_exactly(make_cfg, tok, workers):
  # Skipped samples put batch ends inside a chunk (pipeline._pack_chunk): a restore resumes there.
  cfg = make_cfg(workers=workers)
  iters, counter = pipeline.make_train_iterators(cfg, tok)
  pipeline.first_batches(iters, 3)
  laion_skips = lambda: sum(v for k, v in counter.counts.items() if k.startswith("laion/"))
  for _ in range(20):  # read on until a LAION batch ends inside a chunk
    if laion_skips() % cfg.laion.batch_size:
      break
    pipeline.first_batches(iters, 1)
  assert laion_skips() % cfg.laion.batch_size, counter.counts
  state = {k: it.get_state() for k, it in iters.items()}
  expected = pipeline.first_batches(iters, 3)
  fresh, _ = pipeline.make_train_iterators(cfg, tok)
  for k, it in fresh.items():
    it.set_state(state[k])
  # A position saved right after a restore, before the restored chunk is used up, is the same one.
  saved_again = {k: it.get_state() for k, it in fresh.items()}
  assert_same_batches(expected, pipeline.first_batches(fresh, 3))
  fresh, _ = pipeline.make_train_iterators(cfg, tok)
  for k, it in fresh.items():
    it.set_state(saved_again[k])
  assert_same_batches(expected, pipeline.first_batches(fresh, 3))
  fresh, _ = pipeline.make_train_iterators(make_cfg(workers=2 - workers), tok)  # other workers
  for k, it in fresh.items():
    it.set_state(state[k])
  assert_same_batches(expected, pipeline.first_batches(fresh, 3))
  # Checkpoints from before the chunks held Grain's state of reading one sample at a time:
  # in-process {"next_index": samples read}, or by worker processes (mp_prefetch's layout, here as
  # Grain writes it after the same samples). Both resume at the same batch, whatever the workers.
  for layout in ("in-process", "2 workers"):
    fresh, _ = pipeline.make_train_iterators(cfg, tok)
    for k, it in fresh.items():
      read = _samples_read(state[k]["iterator"], pipeline.chunk_size(k, cfg))
      old = {"next_index": read} if layout == "in-process" else _per_sample_worker_state(cfg, k, read)
      it.set_state({"iterator": old, "skipped": state[k]["skipped"]})
    assert_same_batches(expected, pipeline.first_batches(fresh, 3))
  fresh, _ = pipeline.make_train_iterators(cfg, tok)
  with pytest.raises(ValueError, match=pipeline.OLD_DATA_STATE):  # workers out of turn
    fresh["laion"].set_state({"iterator": {"workers_state": {"0": {"next_index": 3}, "1": {"next_index": 5}},
                                           "iterations_to_skip": {"0": 0, "1": 0}}, "skipped": {}})
  with pytest.raises(ValueError, match=pipeline.OLD_DATA_STATE):  # a layout this version does not know
    fresh["laion"].set_state({"iterator": {"position": 3}, "skipped": {}})


def test_a_position_resumes_at_the_same_sample_after_the_batch_size_changes(make_cfg, tok):
  # Batches of 2 (chunks of 2) read for 3 batches, then batches (and chunks) of 6.
  small, large = make_cfg(), make_cfg()
  large.mmc4.batch_size = 6
  iters, _ = pipeline.make_train_iterators(small, tok)
  for _ in range(3):
    next(iters["mmc4"])
  state = iters["mmc4"].get_state()
  assert state["chunk"] == 2 and state["iterator"]["parent"] == {"next_index": 2}  # 3 batches of 2: 3 chunks
  fresh, _ = pipeline.make_train_iterators(large, tok)
  fresh["mmc4"].set_state(state)
  straight, _ = pipeline.make_train_iterators(large, tok)
  stream = [next(straight["mmc4"]) for _ in range(2)]  # samples 0-5, then 6-11
  resumed = next(fresh["mmc4"])  # samples 6-11: after the 6 the small batches took
  assert_same_batches([{"mmc4": stream[1]}], [{"mmc4": resumed}])
  with pytest.raises(ValueError, match=pipeline.OLD_DATA_STATE):  # a chunk-level state without its place in the chunk
    fresh["mmc4"].set_state({"iterator": {"parent": {"next_index": 2}}, "skipped": {}, "chunk": 2})


def test_flipped_laion_resumes_with_its_flips(make_cfg, tok):
  # The default config flips LAION batches (a random_map after batching, whose state wraps the
  # rest): a position resumes, flips included, also at another batch size.
  cfg = make_cfg()
  cfg.random_flip = True
  iters, _ = pipeline.make_train_iterators(cfg, tok)
  for _ in range(3):
    next(iters["laion"])
  state = iters["laion"].get_state()
  assert set(state["iterator"]) == {"parent", "index_for_rng"}
  expected = [next(iters["laion"]) for _ in range(4)]
  fresh, _ = pipeline.make_train_iterators(cfg, tok)
  fresh["laion"].set_state(state)
  assert_same_batches([{"laion": b} for b in expected], [{"laion": next(fresh["laion"])} for _ in range(4)])
  # The flips are part of it: the same samples with the flips' draws restarted differ.
  fresh, _ = pipeline.make_train_iterators(cfg, tok)
  fresh["laion"].set_state({**state, "iterator": {**state["iterator"], "index_for_rng": 0}})
  assert any(not np.array_equal(b["images"], next(fresh["laion"])["images"]) for b in expected)


def _samples_read(inner: dict, chunk: int) -> int:
  """Samples a pipeline of today had read, from its Grain state: chunks before the current one
  (in-process or by workers) and the position in the current one."""
  return pipeline.elements_read(inner["parent"]) * chunk + inner["next_index_in_buffer"]


def _per_sample_worker_state(cfg, name: str, read: int) -> dict:
  """Grain's state of 2 worker processes that have handed over `read` records one at a time (the
  pre-chunk pipeline's layout; the state counts elements, whatever they hold)."""
  import grain  # pylint: disable=g-import-not-at-top
  records = pipeline.training_order(name, cfg).to_iter_dataset()
  it = iter(records.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=2)))
  for _ in range(read):
    next(it)
  return it.get_state()


def test_worker_positions_worked_examples():
  state = {"workers_state": {"0": {"next_index": 380}, "1": {"next_index": 0}},
           "iterations_to_skip": {"0": 70, "1": 450}, "last_worker_index": 1}
  assert pipeline.elements_read(state) == 900
  five = pipeline.chunk_position_state(5, 2)
  assert five == {"workers_state": {"0": {"next_index": 3}, "1": {"next_index": 2}},
                  "iterations_to_skip": {"0": 0, "1": 0}, "last_worker_index": 0}
  assert pipeline.elements_read(five) == 5
  assert pipeline.chunk_position_state(0, 2)["last_worker_index"] == -1
  assert pipeline.chunk_position_state(7, 0) == {"next_index": 7}


@pytest.mark.parametrize("count", [2, 3])  # whole shards per process; every n-th sample
def test_processes_read_disjoint_parts(make_cfg, count):
  cfg = make_cfg()
  keys = [{r["__key__"] for r in pipeline.local_source("laion", cfg, i, count)} for i in range(count)]
  everything = {r["__key__"] for r in pipeline.local_source("laion", cfg)}
  assert all(keys) and sum(map(len, keys)) == len(everything) == len(set().union(*keys))


def test_process_batches_differ(make_cfg, tok):
  cfg = make_cfg()
  a, b = (pipeline.first_batches(pipeline.make_train_iterators(cfg, tok, process_index=i, process_count=2)[0])
          for i in range(2))
  assert a[0]["laion"]["input_ids"].shape[0] == 2  # the per-process half of the batch
  assert not np.array_equal(a[0]["laion"]["images"], b[0]["laion"]["images"])


def test_bad_samples_are_skipped_and_counted(make_cfg, tok):
  iters, counter = pipeline.make_train_iterators(make_cfg(), tok)
  pipeline.first_batches(iters, 30)  # > one pass over every shard, broken samples included
  for reason in ("laion/undecodable_image", "laion/empty_text", "laion/missing_field",
                 "mmc4/undecodable_image", "mmc4/missing_field", "mmc4/bad_json",
                 "mmc4/single_image_dropped"):
    assert counter.counts[reason] >= 1, (reason, counter.counts)


def test_laion_flips_whole_batches(make_cfg, tok):
  plain = pipeline.first_batches(pipeline.make_train_iterators(make_cfg(), tok)[0], 8)
  cfg = make_cfg()
  cfg.random_flip = True
  flipped = pipeline.first_batches(pipeline.make_train_iterators(cfg, tok)[0], 8)
  same = [np.array_equal(p["laion"]["images"], f["laion"]["images"]) for p, f in zip(plain, flipped)]
  for p, f, s in zip(plain, flipped, same):
    if not s:
      np.testing.assert_array_equal(image_preprocess.hflip(p["laion"]["images"]), f["laion"]["images"])
    np.testing.assert_array_equal(p["laion"]["input_ids"], f["laion"]["input_ids"])
  assert any(same) and not all(same)


def test_unreadable_shard_is_named(tmp_path):
  bad = tmp_path / "broken.tar"
  bad.write_bytes(b"this is not a tar file at all" * 100)
  with pytest.raises(ShardError, match="broken.tar"):
    TarShardSource([str(bad)])
  with pytest.raises(ShardError, match="missing.tar"):
    TarShardSource([str(tmp_path / "missing.tar")])


def test_shard_patterns(tmp_path):
  for i in range(3):
    (tmp_path / f"s-{i:03d}.tar").write_bytes(b"")
  want = [str(tmp_path / f"s-{i:03d}.tar") for i in range(3)]
  assert shards_lib.expand_shards(str(tmp_path / "s-{000..002}.tar")) == want
  assert shards_lib.expand_shards(str(tmp_path / "s-*.tar")) == want
  assert shards_lib.expand_shards(f"{want[2]}, {want[0]}") == [want[2], want[0]]
  with pytest.raises(FileNotFoundError, match="nothing"):
    shards_lib.expand_shards(str(tmp_path / "nothing-*.tar"))
  with pytest.raises(FileNotFoundError, match="No shards given"):
    shards_lib.expand_shards("")


def test_all_bad_data_raises_instead_of_hanging(tmp_path, make_cfg, tok):
  with tarfile.open(tmp_path / "laion-00000.tar", "w") as t:
    for i in range(50):
      info = tarfile.TarInfo(f"s{i}.txt")
      info.size = 3
      t.addfile(info, io.BytesIO(b"abc"))
  cfg = make_cfg()
  cfg.laion.shards = str(tmp_path / "laion-*.tar")
  cfg.max_skip_ratio = 0.5
  with pytest.raises(ValueError, match="skipped|filtered"):
    next(iter(pipeline.make_dataset("laion", cfg, tok, pipeline.SkipCounter())))
