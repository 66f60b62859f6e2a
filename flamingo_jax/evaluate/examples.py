"""What an evaluation task's readers give the runner: examples (an image by path and what the
task asks of it) and a task's demonstration pool and test split."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class CaptionExample:
  image_path: str
  caption: str              # the demonstration caption: sentences[0].raw
  image_id: Any             # cocoid (COCO) or the file name without extension (Flickr30K)
  references: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class VQAExample:
  image_path: str
  question: str
  question_id: Any
  answers: tuple[dict, ...] | None  # annotation records ({"answer", ...}); None without annotations


@dataclasses.dataclass(frozen=True)
class ClassificationExample:
  image_path: str
  label: int                # class index
  id: Any
  text: str | None = None   # HatefulMemes' OCR text


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A task's demonstration pool and test split."""
  train: list
  test: list
  class_names: tuple[str, ...] = ()
