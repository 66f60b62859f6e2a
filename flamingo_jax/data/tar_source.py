"""Random access over WebDataset tar shards: one record per sample key, as WebDataset groups
members (`{key}.{ext}` files that share a key form one sample).

An index of (shard, member offsets) is built once by scanning the headers; reading a record seeks
straight to its members. Random access gives Grain a true global shuffle and exact resume.
Paths may be local or anything `etils.epath` opens (e.g. gs://).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import tarfile
from typing import Sequence

from etils import epath


class ShardError(IOError):
  """A shard that cannot be opened or indexed; the message names it."""


@dataclasses.dataclass(frozen=True)
class _Member:
  ext: str
  offset: int
  size: int


def _split_name(name: str) -> tuple[str, str] | None:
  base = name.rsplit("/", 1)[-1]
  if "." not in base:
    return None
  key, ext = base.split(".", 1)
  prefix = name[: len(name) - len(base)]
  return prefix + key, ext.lower()


class TarShardSource:
  """A Grain random-access data source: record i -> {"__key__": key, ext: bytes, ...}."""

  def __init__(self, shards: Sequence[str], index_threads: int = 16):
    """Indexes `shards` (threads overlap the header reads, which dominate on remote storage)."""
    if not shards:
      raise ValueError("No shards given")
    self._shards = [str(s) for s in shards]
    self._index: list[tuple[int, str, tuple[_Member, ...]]] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, min(index_threads, len(self._shards)))) as pool:
      scanned = pool.map(lambda s: list(self._scan(s)), self._shards)
      for shard_id, groups in enumerate(scanned):
        self._index.extend((shard_id, key, members) for key, members in groups)

  @staticmethod
  def _scan(shard: str):
    try:
      with epath.Path(shard).open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        groups: dict[str, list[_Member]] = {}
        try:
          for info in tar:
            if not info.isfile():
              continue
            split = _split_name(info.name)
            if split is None:
              continue
            key, ext = split
            groups.setdefault(key, []).append(_Member(ext, info.offset_data, info.size))
        except tarfile.ReadError as e:
          if not groups:
            raise
          # A shard cut short (an interrupted copy): keep the samples before the cut; the one it
          # cuts through reads short and is skipped and counted as "unreadable_member".
          logging.warning("Shard %s ends early (%s): reading the %d samples before the end", shard, e, len(groups))
    except (OSError, tarfile.TarError) as e:
      raise ShardError(f"Cannot read shard {shard!r}: {e}") from e
    for key, members in groups.items():
      yield key, tuple(members)

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, index: int) -> dict:
    shard_id, key, members = self._index[index]
    record = {"__key__": key, "__shard__": self._shards[shard_id]}
    try:
      with epath.Path(self._shards[shard_id]).open("rb") as f:
        for m in members:
          f.seek(m.offset)
          data = f.read(m.size)
          if len(data) != m.size:
            raise EOFError(f"truncated member {key}.{m.ext}")
          record[m.ext] = data
    except (OSError, EOFError) as e:
      logging.warning("Unreadable sample %s in %s: %s", key, self._shards[shard_id], e)
      record["__error__"] = "unreadable_member"
    return record

  def __repr__(self) -> str:
    return f"TarShardSource({len(self._shards)} shards, {len(self)} samples)"
