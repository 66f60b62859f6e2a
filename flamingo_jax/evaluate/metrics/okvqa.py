"""OK-VQA's answer stemming (the OK-VQA v1.1 procedure OpenFlamingo applies to predictions).

Per word of the NLTK-tokenized, POS-tagged answer: a fixed manual table first; else words ending
in "ing" are WordNet-lemmatized as verbs; else plural nouns (NNS, NNPS) are singularized with
`inflection`. Needs `nltk` (with its tokenizer, tagger and WordNet data) and `inflection`.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Callable, Sequence

from flamingo_jax.evaluate.metrics import vqa

with open(os.path.join(vqa._DATA, "okvqa_manual_stems.json")) as _f:  # pylint: disable=protected-access
  MANUAL_STEMS: dict[str, str] = json.load(_f)

_NLTK_HELP = ("OK-VQA stemming needs NLTK data: python -m nltk.downloader punkt punkt_tab wordnet "
              "averaged_perceptron_tagger averaged_perceptron_tagger_eng")


class OkVqaStemmer:
  """`stem(text)`; the NLP pieces are injectable (tests) and default to NLTK + inflection."""

  def __init__(self, tokenize: Callable[[str], Sequence[str]] | None = None,
               pos_tag: Callable[[Sequence[str]], Sequence[tuple[str, str]]] | None = None,
               lemmatize_verb: Callable[[str], str] | None = None,
               singularize: Callable[[str], str] | None = None):
    if None in (tokenize, pos_tag, lemmatize_verb, singularize):
      try:
        import inflection  # pylint: disable=g-import-not-at-top
        import nltk  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError("OK-VQA evaluation needs `pip install nltk inflection`") from e
      lemmatizer = nltk.stem.WordNetLemmatizer()
      tokenize = tokenize or nltk.tokenize.word_tokenize
      pos_tag = pos_tag or nltk.pos_tag
      lemmatize_verb = lemmatize_verb or (lambda w: lemmatizer.lemmatize(w, "v"))
      singularize = singularize or inflection.singularize
    self._tokenize, self._pos_tag = tokenize, pos_tag
    self._lemmatize_verb, self._singularize = lemmatize_verb, singularize

  def stem(self, text: str) -> str:
    try:
      tagged = self._pos_tag(self._tokenize(text))
    except LookupError as e:  # NLTK data missing
      raise LookupError(f"{_NLTK_HELP}\n{e}") from e
    words = []
    for word, tag in tagged:
      if word in MANUAL_STEMS:
        word = MANUAL_STEMS[word]
      elif word.endswith("ing"):
        word = self._lemmatize_verb(word)
      elif tag.startswith("NNS") or tag.startswith("NNPS"):
        word = self._singularize(word)
      words.append(word)
    return " ".join(words)


@functools.lru_cache(maxsize=1)
def default_stemmer() -> OkVqaStemmer:
  return OkVqaStemmer()


def postprocess_ok_vqa(generation: str, stemmer: OkVqaStemmer | None = None) -> str:
  """OpenFlamingo's OK-VQA post-processing: the VQA cut, then stemming."""
  return (stemmer or default_stemmer()).stem(vqa.postprocess_vqa(generation))
