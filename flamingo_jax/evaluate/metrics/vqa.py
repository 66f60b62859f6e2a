"""VQA accuracy with the official answer normalisation, and OpenFlamingo's answer post-processing.

Accuracy of a prediction on one question: for each of the (usually 10) human answers,
min(1, #matches among the *other* answers / 3), averaged. "Other" follows the official code: the
answers whose annotation record differs from this one. With VQAv2's numbered answers that is the
other nine; VizWiz's records carry no answer id, so identical records all drop out together
(the official VizWiz and OpenFlamingo numbers include this effect, so we keep it).

Normalisation ('reference', OpenFlamingo's copy of the official code): both the prediction and
every human answer get `process_punctuation` then `process_digit_article`. The official VQA
script ('official') normalises the prediction the same way but the human answers only when they
disagree, and then only their punctuation.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

_DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
with open(os.path.join(_DATA, "vqa_contractions.json")) as _f:
  CONTRACTIONS: dict[str, str] = json.load(_f)

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(["a", "an", "the"])
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
               "`", ",", "?", "!"]
# The official pattern; its "(?!<=\d)" is a lookahead typo, so it strips every period not
# followed by a digit. `sub(..., re.UNICODE)` passes 32 as *count*: at most 32 are stripped.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
  """Drops each listed mark if it touches a space (or the text has a digit,digit); else spaces it."""
  out = text
  drop_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
  for p in PUNCTUATION:
    if drop_all or (p + " " in text or " " + p in text):
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD_STRIP.sub("", out, 32)


def process_digit_article(text: str) -> str:
  """Lowercase; number words -> digits; drop articles; restore apostrophes of contractions."""
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
  return " ".join(words)


def _clean(text: str) -> str:
  return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
  """The full normalisation of an answer string."""
  return process_digit_article(process_punctuation(_clean(text)))


def _records(answers: Sequence[Any]) -> list[dict]:
  """Answer records as dicts; bare strings get their position as id (so none are identical)."""
  return [dict(a) if isinstance(a, Mapping) else {"answer": a, "answer_id": i}
          for i, a in enumerate(answers)]


def question_accuracy(prediction: str, answers: Sequence[Any], normalization: str = "reference") -> float:
  """Accuracy in [0, 1] of one prediction against the human answers (records or strings)."""
  records = _records(answers)
  if not records:
    raise ValueError("A question needs at least one human answer")
  pred = normalize_answer(prediction)
  for r in records:
    r["answer"] = _clean(r["answer"])
  if normalization == "reference":
    for r in records:
      r["answer"] = process_digit_article(process_punctuation(r["answer"]))
  elif normalization == "official":
    if len({r["answer"] for r in records}) > 1:
      for r in records:
        r["answer"] = process_punctuation(r["answer"])
  else:
    raise ValueError(f"Unknown VQA normalization {normalization!r} (reference | official)")
  scores = []
  for r in records:
    matches = sum(1 for other in records if other != r and other["answer"] == pred)
    scores.append(min(1.0, matches / 3.0))
  return sum(scores) / len(scores)


def vqa_accuracy(predictions: Mapping[Any, str], answers: Mapping[Any, Sequence[Any]],
                 normalization: str = "reference") -> float:
  """Overall accuracy in percent, rounded to 2 decimals, over the predicted questions."""
  if not predictions:
    raise ValueError("No predictions to score")
  missing = [q for q in predictions if q not in answers]
  if missing:
    raise KeyError(f"{len(missing)} predicted questions have no annotations, e.g. {missing[:3]}")
  accs = [question_accuracy(p, answers[q], normalization) for q, p in predictions.items()]
  return round(100.0 * sum(accs) / len(accs), 2)


def postprocess_vqa(generation: str) -> str:
  """OpenFlamingo's cut of a generated answer: before Question/Answer/Short, then before ", "."""
  answer = re.split("Question|Answer|Short", generation, maxsplit=1)[0]
  return answer.split(", ", 1)[0]
