"""Local paths and storage URLs (gs://...) side by side: every path the project takes may be either."""
from __future__ import annotations

import os


def is_remote(path: str) -> bool:
  """Whether `path` is a URL of an object store (gs://bucket/...) rather than a local path."""
  return "://" in str(path)


def resolve(path: str) -> str:
  """Local paths made absolute (Orbax requires that); URLs as given."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def join(directory: str, *names: str) -> str:
  """`directory/name…` for a local directory or a URL (gs://bucket/dir/name)."""
  return "/".join([str(directory).rstrip("/"), *names]) if is_remote(directory) else os.path.join(directory, *names)


def write(path: str, data: str | bytes) -> str:
  """Writes a whole file, local or remote, making its directory first; returns `path`."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  target = epath.Path(resolve(path))
  target.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(data, bytes):
    target.write_bytes(data)
  else:
    target.write_text(data)
  return path


def read_text(path: str) -> str:
  """The text of a local or remote file."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(resolve(path)).read_text()
