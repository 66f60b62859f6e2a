"""Local paths and storage URLs (gs://...) side by side: every path the project takes may be either."""
from __future__ import annotations

import os


def is_remote(path: str) -> bool:
  """Whether `path` is a URL of an object store (gs://bucket/...) rather than a local path."""
  return "://" in str(path)


def resolve(path: str) -> str:
  """Local paths made absolute (Orbax requires that); URLs as given."""
  return str(path) if is_remote(path) else os.path.abspath(path)
