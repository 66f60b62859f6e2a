"""ArrayRecord shards: WebDataset samples repacked for cheap random access and a global shuffle.

A tar shard can only be read at random after scanning all its headers (TarShardSource builds that
index at start-up, which on remote storage costs one pass over every shard). ArrayRecord files
carry their own index, so opening millions of samples is instant.

One ArrayRecord file per tar shard, the same samples in the same order, each record one WebDataset
sample encoded with msgpack: `{"__key__": str, ext: bytes, ...}` (no pickle, so reading a file runs
no code). A sample whose tar members could not be read is kept with its `__error__` field, so the
pipeline skips and counts it exactly as it would from the tar shard.

  python -m flamingo_jax.data.array_record --shards='/data/mmc4/{00000..01023}.tar' \\
      --out_dir=/data/mmc4_array_record

then train with `--config.data.mmc4.shards='/data/mmc4_array_record/*.array_record'`. Both the
shards and `out_dir` may be on gs://; ArrayRecord files are read from gs:// by array_record's own
GCS client.
"""
from __future__ import annotations

import os
import tempfile
from typing import Sequence

import msgpack
from etils import epath

from flamingo_jax.data.tar_source import ShardError
from flamingo_jax.paths import is_remote

SUFFIX = ".array_record"


def encode_record(record: dict) -> bytes:
  """A WebDataset sample ({"__key__", ext: bytes, ...}) -> one ArrayRecord record."""
  return msgpack.packb({k: v for k, v in record.items() if k != "__shard__"}, use_bin_type=True)


def decode_record(data: bytes) -> dict:
  """The inverse of `encode_record`; an undecodable record becomes a sample with `__error__`."""
  try:
    record = msgpack.unpackb(data, raw=False)
  except (ValueError, msgpack.exceptions.ExtraData):  # msgpack's unpack errors are ValueErrors
    return {"__key__": "", "__error__": "unreadable_record"}
  if not isinstance(record, dict) or "__key__" not in record:
    return {"__key__": "", "__error__": "unreadable_record"}
  return record


def _unreadable(paths: Sequence[str]) -> str:
  """The first of `paths` that array_record cannot open (one at a time), or all of them."""
  import grain  # pylint: disable=g-import-not-at-top
  for path in paths[:64]:
    try:
      grain.sources.ArrayRecordDataSource([path])
    except RuntimeError:
      return repr(path)
  return f"among {list(paths)[:3]}"


class ArrayRecordSource:
  """A Grain random-access data source over ArrayRecord files: record i -> a WebDataset sample."""

  def __init__(self, paths: Sequence[str]):
    import grain  # pylint: disable=g-import-not-at-top
    if not paths:
      raise ValueError("No ArrayRecord files given")
    missing = [p for p in paths if not is_remote(p) and not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f"ArrayRecord files not found: {missing[:5]}")
    self._paths = [str(p) for p in paths]
    try:
      self._source = grain.sources.ArrayRecordDataSource(self._paths)
    except RuntimeError as e:  # array_record's reader: a corrupt file, or not ArrayRecord at all
      raise ShardError(f"Cannot read ArrayRecord shard {_unreadable(self._paths)} "
                       f"({str(e).split(';')[0][:120]}); WebDataset shards must end in .tar") from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return decode_record(self._source[index])

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self._paths)} files, {len(self)} samples)"


def output_path(shard: str, out_dir: str) -> str:
  """`.../mmc4-00012.tar` -> `out_dir/mmc4-00012.array_record`."""
  name = shard.rstrip("/").rsplit("/", 1)[-1]
  return os.path.join(out_dir, name.removesuffix(".tar") + SUFFIX)


def convert_shard(shard: str, out_path: str) -> tuple[int, int]:
  """Writes one tar shard's samples to `out_path` (whole or absent); -> (samples, unreadable).

  The file is written locally first and then renamed into place, or, for a gs:// `out_path`,
  uploaded in one piece (an object store shows an object only once it is complete)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from flamingo_jax.data.tar_source import TarShardSource  # pylint: disable=g-import-not-at-top
  source = TarShardSource([shard], index_threads=1)
  remote = is_remote(out_path)
  tmp = (os.path.join(tempfile.gettempdir(), f"{os.path.basename(out_path)}.tmp-{os.getpid()}")
         if remote else f"{out_path}.tmp-{os.getpid()}")
  unreadable = 0
  try:
    # group_size:1 makes every record separately addressable: random reads decode one record.
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    for i in range(len(source)):
      record = source[i]
      unreadable += "__error__" in record
      writer.write(encode_record(record))
    writer.close()
    if remote:
      epath.Path(tmp).copy(out_path, overwrite=True)
    else:
      os.replace(tmp, out_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return len(source), unreadable


def convert(shards: Sequence[str], out_dir: str, overwrite: bool = False,
            progress: bool = True) -> dict[str, int]:
  """Converts every shard (skipping those already converted unless `overwrite`); -> counts."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  counts = {"shards": 0, "already_converted": 0, "samples": 0, "unreadable_samples": 0}
  for shard in tqdm(shards, desc="tar -> ArrayRecord", unit="shard", disable=not progress):
    out_path = output_path(shard, out_dir)
    if epath.Path(out_path).exists() and not overwrite:
      counts["already_converted"] += 1  # a re-run resumes an interrupted conversion
      continue
    n, bad = convert_shard(shard, out_path)
    counts["shards"] += 1
    counts["samples"] += n
    counts["unreadable_samples"] += bad
  return counts
