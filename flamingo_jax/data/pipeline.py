"""Grain pipelines from WebDataset shards to fixed-shape training batches.

Per dataset: this process's shards -> random-access source (tar or ArrayRecord) -> (its every n-th sample if there
are fewer shards than processes) -> seeded shuffle, reshuffled every epoch -> repeat ->
preprocess (in worker processes when `workers > 0`, handed over in chunks of a batch's size) ->
drop and count skipped samples -> batch
-> (pairs) one random flip per batch. What a dataset's kind does is its record's (data/kinds.py). The iterators are Grain `DatasetIterator`s:
`get_state()`/`set_state()` resume exactly, and a seed gives the same batches whatever the number
of workers.

Every batch (numpy, per process) is checked against the batch contract, `data/batch.py`.
"""
from __future__ import annotations

import copy
import functools
import os

import grain
import ml_collections
import numpy as np

from flamingo_jax.data import array_record, batch as batch_lib
from flamingo_jax.data.shards import expand_shards, process_shards
from flamingo_jax.data.skips import Skip, SkipCounter
from flamingo_jax.data.tar_source import ShardError, TarShardSource
from flamingo_jax.data.text import TextEncoder
from flamingo_jax.data.tokenizer import special_ids
from flamingo_jax.errors import DataStateError

__all__ = ["Skip", "SkipCounter", "expand_shards", "make_dataset", "make_train_iterators",
           "validation_batches", "ensure_synthetic_shards", "first_batches", "local_source", "training_order"]


class _Preprocess:
  """The per-sample function of one dataset, its kind's `preprocess` with the dataset's settings;
  a plain object so it pickles to worker processes."""

  def __init__(self, name: str, cfg: ml_collections.ConfigDict, tok):
    kind = batch_lib.kind_of(name, cfg)
    self._encoder = TextEncoder(tok)
    self._fn = functools.partial(kind.preprocess, settings=kind.settings(cfg[name], cfg, special_ids(tok)))
    self.draws = kind.draws  # a seeded generator per sample only where it draws (one costs ~25 us)

  def __call__(self, record: dict, rng: np.random.Generator | None = None):
    if self.draws:
      return self._fn(record, self._encoder, rng)
    return self._fn(record, self._encoder)


def open_source(paths: list[str]):
  """A random-access source over WebDataset tar shards or their ArrayRecord conversions."""
  is_ar = [p.endswith(array_record.SUFFIX) for p in paths]
  if all(is_ar):
    return array_record.ArrayRecordSource(paths)
  if any(is_ar):
    raise ValueError("A dataset's shards must be all tar or all ArrayRecord, got both: "
                     f"{[p for p, a in zip(paths, is_ar) if a][:2]} and {[p for p, a in zip(paths, is_ar) if not a][:2]}")
  return TarShardSource(paths)


def local_source(name: str, cfg: ml_collections.ConfigDict, process_index: int = 0,
                 process_count: int = 1, field: str = "shards") -> grain.MapDataset:
  """This process's disjoint part of a dataset's raw records ({"__key__", ext: bytes, ...});
  errors name `data.<name>.<field>`."""
  try:
    paths, slice_samples = process_shards(expand_shards(cfg[name].shards), process_index, process_count)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"data.{name}.{field}: {e}") from e
  ds = grain.MapDataset.source(open_source(paths))
  if not len(ds):  # (Grain would end the first epoch at once)
    raise ShardError(f"data.{name}.{field}={cfg[name].shards}: {len(paths)} shard(s) and no samples in them")
  return ds[process_index::process_count] if slice_samples else ds


def training_order(name: str, cfg: ml_collections.ConfigDict, process_index: int = 0,
                   process_count: int = 1) -> grain.MapDataset:
  """This process's raw records in the order training reads them, without end: a seeded shuffle,
  drawn anew each epoch (record i of epoch e is `training_order(...)[e * len(source) + i]`)."""
  ds = local_source(name, cfg, process_index, process_count)
  return ds.shuffle(seed=_seed(name, cfg)).repeat()  # shuffle first: per epoch


def _seed(name: str, cfg: ml_collections.ConfigDict) -> int:
  return cfg.seed + batch_lib.mixture(cfg).index(name)


def make_dataset(name: str, cfg: ml_collections.ConfigDict, tok, counter: SkipCounter, *,
                 process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The batched, infinite Grain dataset of dataset `name` (per-process batch size)."""
  batch_size = cfg[name].batch_size
  if batch_size % process_count:
    raise ValueError(f"{name} batch size {batch_size} is not divisible by {process_count} processes")
  seed = _seed(name, cfg)
  ds = training_order(name, cfg, process_index, process_count)
  preprocess = _Preprocess(name, cfg, tok)
  ds = ds.random_map(preprocess, seed=seed) if preprocess.draws else ds.map(preprocess)
  local = batch_size // process_count
  # Samples travel in chunks (one set of arrays per chunk, not per sample), unpacked here in the
  # order they were read: the same samples and order whatever the workers.
  chunk = chunk_size(name, cfg, process_count)
  ds = ds.batch(chunk, batch_fn=_pack_chunk)
  # Bounded read-ahead (in chunks): a preprocessed MMC4 sample is megabytes.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                            prefetch_buffer_size=max(cfg.read_threads, 2)))
  if cfg.workers > 0:
    it = _OwnStates(it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=cfg.workers)))
  it = grain.experimental.FlatMapIterDataset(it, _Unpack(chunk))
  it = it.filter(functools.partial(counter.keep, name))  # in this process: one counter for all
  # A dataset whose samples are (nearly) all bad raises, naming the ratio, instead of spinning.
  it = grain.experimental.WithOptionsIterDataset(
      it, grain.experimental.DatasetOptions(filter_raise_threshold_ratio=cfg.max_skip_ratio))
  it = it.batch(local, drop_remainder=True)
  flip_batch = batch_lib.kind_of(name, cfg).flip_batch
  if flip_batch and cfg.random_flip:
    it = it.random_map(flip_batch, seed=seed)
  return it.map(_Checked(name, batch_lib.batch_shapes(name, cfg, local)))


MAX_CHUNK = 16  # samples: an MMC4 chunk at 224 px is then at most ~14 MB of shared memory


def chunk_size(name: str, cfg: ml_collections.ConfigDict, process_count: int = 1) -> int:
  """Preprocessed samples per handover from a worker: a batch's, at most MAX_CHUNK (read-ahead
  and shared memory stay bounded at large batches), at least 2 (Grain cannot size an endless
  dataset batched by 1)."""
  return min(max(cfg[name].batch_size // process_count, 2), MAX_CHUNK)


def _pack_chunk(samples: list) -> dict:
  """Consecutive preprocessed samples -> one element: the kept samples' arrays stacked, and
  `slots`, per sample in order, None (the next stacked sample) or its `Skip`.

  Worked example: [a, Skip("empty_text"), b] -> {"arrays": {k: stack([a[k], b[k]])},
  "slots": (None, Skip("empty_text"), None)}.
  """
  kept = [s for s in samples if not isinstance(s, Skip)]
  arrays = {k: np.stack([s[k] for s in kept]) for k in kept[0]} if kept else {}
  return {"arrays": arrays, "slots": tuple(s if isinstance(s, Skip) else None for s in samples)}


class _Unpack(grain.experimental.FlatMapTransform):
  """A `_pack_chunk` element -> its samples and `Skip`s, in their original order."""

  def __init__(self, chunk_size: int):
    self.max_fan_out = chunk_size

  def flat_map(self, chunk: dict) -> list:
    # Plain views of the worker's shared-memory arrays (each keeps its block alive): indexing
    # Grain's SharedMemoryArray subclass runs Python hooks for every view made.
    arrays = {k: v.view(np.ndarray) for k, v in chunk["arrays"].items()}
    out, kept = [], 0
    for slot in chunk["slots"]:
      if slot is None:
        out.append({k: v[kept] for k, v in arrays.items()})
        kept += 1
      else:
        out.append(slot)
    return out


class _OwnStates(grain.IterDataset):
  """Its parent, with states copied in and out of its iterator.

  Why: after `set_state`, Grain's flat-map iterator keeps the very dict it handed its parent as
  its own position until the restored chunk is used up; the worker-process iterator advances that
  dict in place as it reads the chunk, so a position saved in between was one chunk ahead.
  """

  def __iter__(self):
    return _OwnStatesIterator(iter(self._parent))


class _OwnStatesIterator(grain.DatasetIterator):

  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return copy.deepcopy(self._parent.get_state())  # Grain 0.2.11 copies too; later ones may not

  def set_state(self, state):
    self._parent.set_state(copy.deepcopy(state))


class _Checked:
  """Passes a batch on after checking it against the contract (a plain object: it pickles)."""

  def __init__(self, name: str, shapes: dict):
    self.name, self.shapes = name, shapes

  def __call__(self, batch: dict) -> dict:
    batch_lib.check_batch(self.name, batch, self.shapes)
    return batch


def make_train_iterators(cfg: ml_collections.ConfigDict, tok, *, process_index: int = 0,
                         process_count: int = 1) -> tuple[dict[str, grain.DatasetIterator], SkipCounter]:
  """{dataset: iterator} of this process's batches, in `data.mixture`'s order, and their skip counter.

  `cfg` is the config's `data` field (configs/data.py). Each process reads a disjoint part of the
  shards; the iterators' `get_state()`/`set_state()` go into checkpoints.
  """
  counter = SkipCounter()
  iters = {name: CountingIterator(iter(make_dataset(name, cfg, tok, counter, process_index=process_index,
                                                    process_count=process_count)), name, counter,
                                  chunk_size(name, cfg, process_count), cfg.workers)
           for name in batch_lib.mixture(cfg)}
  return iters, counter


OLD_DATA_STATE = "The data position in this checkpoint cannot be read"


class CountingIterator(grain.DatasetIterator):
  """A dataset's batch iterator whose state carries the dataset's skip counts, so that a
  checkpoint (and a rewind) restores the counts of the samples read up to its position.

    state = it.get_state()   # {"iterator": <Grain's state>, "skipped": {"laion/empty text": 3, ...},
                             #  "chunk": samples per chunk}
  """

  def __init__(self, inner: grain.DatasetIterator, name: str, counter: SkipCounter, chunk: int = 2,
               workers: int = 0):
    super().__init__(inner)
    self._inner, self._prefix, self._counter = inner, f"{name}/", counter
    self._chunk, self._workers = chunk, workers

  def __next__(self):
    return next(self._inner)

  def get_state(self) -> dict:
    skipped = {k: int(v) for k, v in self._counter.counts.items() if k.startswith(self._prefix)}
    return {"iterator": self._inner.get_state(), "skipped": skipped, "chunk": self._chunk}

  def set_state(self, state: dict) -> None:
    state = copy.deepcopy(state)  # Grain advances the state it is given in place
    if "iterator" not in state:  # a checkpoint from before the counts were saved
      self._inner.set_state(self._chunked(state, self._chunk))
      return
    # A position saved before the chunk size was saved is in this run's chunks (as it then was).
    self._inner.set_state(self._chunked(state["iterator"], int(state.get("chunk", self._chunk))))
    for key in [k for k in self._counter.counts if k.startswith(self._prefix)]:
      del self._counter.counts[key]
    self._counter.counts.update(state["skipped"])

  def _chunked(self, inner: dict, saved_chunk: int) -> dict:
    """Grain's state in today's layout for this pipeline's worker count and chunk size, from the
    samples read (n -> chunk n // size, sample n % size): today's state (the chunks before the
    current one, read in-process or by any number of workers, each of `saved_chunk` samples, and
    the samples taken from the current one), or one written before samples moved in chunks.

    Worked example: {"parent": {"next_index": 3}, "next_index_in_buffer": 2} of chunks of 4 read
    into chunks of 6, in-process -> 14 samples -> {"parent": {"next_index": 2}, "next_index_in_buffer": 2}.
    """
    if "parent" in inner and "next_index_in_buffer" not in inner:
      if set(inner) != {"parent", "index_for_rng"}:
        raise DataStateError(f"{OLD_DATA_STATE}: it has no position in its current chunk "
                         f"({sorted(inner)}); start a new workdir")
      # LAION's batch flips (a random_map after batching) wrap the sample-level state.
      return {**inner, "parent": self._chunked(inner["parent"], saved_chunk)}
    if "parent" in inner:
      n = elements_read(inner["parent"]) * saved_chunk + int(inner["next_index_in_buffer"])
    else:
      n = elements_read(inner)
    return {"parent": chunk_position_state(n // self._chunk, self._workers),
            "next_index_in_buffer": n % self._chunk}


def elements_read(state: dict) -> int:
  """How many elements a Grain iterator had handed over, from its state: in-process
  {"next_index": n}, or by worker processes (`mp_prefetch`), where worker w reads every W-th
  element from the w-th and its state holds its position in that slice at some recent element
  and the elements handed over since. Workers hand over in turn from worker 0, so the first ones
  are at most one ahead of the rest.

  Worked example: {"workers_state": {"0": {"next_index": 380}, "1": {"next_index": 0}},
  "iterations_to_skip": {"0": 70, "1": 450}, ...} -> 450 + 450 = 900.
  """
  if set(state) == {"next_index"}:
    return int(state["next_index"])
  if "workers_state" not in state:
    raise DataStateError(f"{OLD_DATA_STATE}, in a layout this version does not know ({sorted(state)}); "
                     "resume it with the flamingo_jax that wrote it, or start a new workdir")
  try:
    counts = [int(state["workers_state"][w]["next_index"]) + int(state["iterations_to_skip"][w])
              for w in sorted(state["workers_state"], key=int)]
  except (KeyError, TypeError, ValueError) as e:
    raise DataStateError(f"{OLD_DATA_STATE}: its worker-process position is unreadable ({e!r}); start a "
                     "new workdir") from None
  if not counts or any(b > a for a, b in zip(counts, counts[1:])) or counts[0] - counts[-1] > 1:
    raise DataStateError(f"{OLD_DATA_STATE}: its workers' positions {counts} are not in turn; start a "
                     "new workdir")
  return sum(counts)


def chunk_position_state(chunks: int, workers: int) -> dict:
  """Grain's state of the chunk-level iterator (before `_Unpack`) after `chunks` chunks: in-process
  {"next_index": chunks}; with worker processes, which hand chunks over in turn from worker 0,
  each worker's position in its slice (the inverse of `elements_read`).

  Worked example: chunks=5, workers=2 -> workers 0 and 1 at 3 and 2, worker 0 handed over last.
  """
  if not workers:
    return {"next_index": chunks}
  return {"workers_state": {str(w): {"next_index": (chunks - w + workers - 1) // workers} for w in range(workers)},
          "iterations_to_skip": {str(w): 0 for w in range(workers)},
          "last_worker_index": (chunks - 1) % workers if chunks else -1}


def validation_batches(name: str, cfg: ml_collections.ConfigDict, tok, n: int, *, process_index: int = 0,
                       process_count: int = 1) -> tuple[list[dict[str, np.ndarray]], SkipCounter, int]:
  """The first `n` batches of a dataset's held-out shards (`data.<name>.validation_shards`), this
  process's part: the same batches for every call (seeded order, no flips, read in this process).
  Also their skip counter and how many samples the held-out shards hold (this process's part)."""
  held_out = cfg.copy_and_resolve_references()
  with held_out.unlocked():
    held_out[name].shards = cfg[name].validation_shards
    held_out.update(random_flip=False, workers=0)
  available = len(local_source(name, held_out, process_index, process_count, field="validation_shards"))
  counter = SkipCounter()
  it = iter(make_dataset(name, held_out, tok, counter, process_index=process_index, process_count=process_count))
  return [next(it) for _ in range(n)], counter, available


def ensure_synthetic_shards(cfg: ml_collections.ConfigDict) -> None:
  """Writes the synthetic shards a config points at (training and held-out) if they are missing
  (tiny runs, tests)."""
  if not cfg.get("synthetic_dir"):
    return
  from flamingo_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  # A marker written after the last shard: a run started while another writes them (tests run
  # several at once) must not read a half-written set; it writes its own copy (the same bytes).
  marker = os.path.join(cfg.synthetic_dir, ".complete")
  if not os.path.exists(marker):
    print(f"Writing synthetic shards to {cfg.synthetic_dir} ...", flush=True)
    synthetic.write_shards(cfg.synthetic_dir, image_size=cfg.image_size, seed=cfg.seed)
    with open(marker, "w"):
      pass


def first_batches(iters: dict, n: int = 1) -> list[dict[str, dict[str, np.ndarray]]]:
  """Convenience for tests and benchmarks: the next n batches of each iterator."""
  return [{name: next(it) for name, it in iters.items()} for _ in range(n)]
