"""The PTB tokenizer of the COCO caption evaluation (pycocoevalcap 1.2: Stanford CoreNLP 3.4.1's
PTBTokenizer, `-preserveLines -lowerCase`, then its punctuation tokens dropped), in Python.

Two parts:
- Every character outside ASCII belongs to one class of the Stanford lexer, read from the lexer
  itself (`python -m flamingo_jax.evaluate.metrics.ptb --regenerate` runs Java over each code
  point and writes `assets/ptb_classes.json`): `word` (letters, digits and marks that join into
  words, any script), `mark` (joins after a letter, not after a digit), `sym` (a token of its
  own), `symrun` (a token of its own; repeats join: `²²`), `sep` (no token: characters the lexer
  cannot tokenize, e.g. emoji, U+FFFD, zero-width and format characters, which it deletes, and
  punctuation it turns into a dropped token: dashes, ellipses, typographic quotes).
- The lexer's rules for ASCII and for what it rewrites: brackets (-lrb- ...), currency (£ -> #,
  € -> $, ¢ -> cents), fractions (½ -> 1/2), quotes (`` '' ` ', dropped), clitics split with
  their apostrophe made ASCII (dog’s -> dog 's, don’t -> do n't), the words its grammar keeps
  whole around an apostrophe (o’neil, '90s, rock 'n' roll, ma'am), abbreviations, numbers,
  URLs, e-mail addresses, handles.

  ptb_tokenize("A man’s “vintage” café — ½ price…")  ->  "a man 's vintage café 1/2 price"

Lines: pycocoevalcap sends captions to Java one per line, and Java also breaks lines at \\r,
\\v, \\f, U+0085, U+2028 and U+2029, which shifts every later caption onto another image's
line; here (and in `stanford_tokenize`, which runs the Java one) those are spaces.
"""
from __future__ import annotations

import bisect
import functools
import json
import os
import re
import sys
from typing import Hashable, Mapping, Sequence

TABLE = os.path.join(os.path.dirname(__file__), "..", "..", "assets", "ptb_classes.json")
LINE_BREAKS = "\r\x0b\x0c\x85\u2028\u2029"
CLASSES = ("word", "mark", "sym", "symrun", "sep")

# pycocoevalcap drops these tokens after tokenizing (case-sensitive: the lowercased
# -lrb-/-rrb-/-lcb-/-rcb- escapes are therefore kept, as in the reference).
DROPPED = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",",
                     ":", "-", "--", "...", ";"])
# What the lexer writes instead of a character (its own token), whatever surrounds it.
REWRITTEN = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-",
             "\u00a2": "cents", "\u00a3": "#", "\u00a4": "$", "\u20a0": "$", "\u20ac": "$", "\x80": "$",
             "\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
APOS = "'\u2019\u0092"  # the lexer's apostrophes
APOS_ETC = APOS + "`\u2018\u201b\u0091"  # and the quotes it accepts in their place
# A clitic's apostrophe as the lexer writes it (dog’s -> dog 's, can‘t -> ca n`t).
ASCII_APOS = str.maketrans({"\u2019": "'", "\u0092": "'", "\u2018": "`", "\u201b": "`", "\u0091": "`"})
# Quotes as the lexer writes them (a run of them is one token: “‘ -> ```, which is not dropped).
QUOTE_FORMS = {"\u201c": "``", "\u201d": "''", "\u00ab": "``", "\u00bb": "''", "\u2018": "`", "\u2019": "'",
               "\u2039": "`", "\u203a": "'", "\u201b": "`", "`": "`", "'": "'", '"': "''", "\u0091": "`",
               "\u0092": "'", "\x93": "``", "\x94": "''"}
QUOTE_CHARS = "\u201c\u201d\u00ab\u00bb\u2018\u2019\u2039\u203a\u201b\x91\x92\x93\x94"
DOUBLE_QUOTES = "\u201c\u201d\u00ab\u00bb\x93\x94"
# Words the lexer splits in two.
SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "wanna": ("wan", "na"),
               "gotta": ("got", "ta"), "gimme": ("gim", "me"), "lemme": ("lem", "me")}
NUMBER_SEPARATORS = "\u2044\u066b\u066c"  # fraction slash, Arabic decimal and thousands
HYPHENS = "\u2010\u2011\u058a"  # join words as "-" does, and are dropped as it is alone
SOFT_HYPHEN = "\u00ad"  # removed inside a word


@functools.lru_cache(maxsize=1)
def _table() -> tuple[list[int], list[int], list[str]]:
  with open(TABLE) as f:
    ranges = json.load(f)["ranges"]
  return [r[0] for r in ranges], [r[1] for r in ranges], [r[2] for r in ranges]


def char_class(ch: str) -> str:
  """The lexer's class of a character outside ASCII (see the module's docstring)."""
  starts, ends, classes = _table()
  i = bisect.bisect_right(starts, ord(ch)) - 1
  return classes[i] if i >= 0 and ord(ch) <= ends[i] else "sep"


@functools.lru_cache(maxsize=1)
def _class_sets() -> dict[str, str]:
  """Each class's characters as a regex character-set body (ranges)."""
  starts, ends, classes = _table()
  out = {c: [] for c in CLASSES}
  for s, e, c in zip(starts, ends, classes):
    out[c].append(re.escape(chr(s)) + ("-" + re.escape(chr(e)) if e > s else ""))
  return {c: "".join(v) for c, v in out.items()}


@functools.lru_cache(maxsize=1)
def _pattern() -> re.Pattern:
  sets = _class_sets()
  letter = f"[A-Za-z{sets['word']}{sets['mark']}]"  # (digits in `word` too: \u0660 ...)
  alnum = f"[A-Za-z0-9{sets['word']}{sets['mark']}]"
  first = f"[A-Za-z0-9{sets['word']}{sets['mark']}]"
  part = f"{first}(?:[A-Za-z0-9{sets['word']}]|(?<![0-9])[{sets['mark']}])*"  # a mark does not follow a digit
  apos, etc = f"[{APOS}]", f"[{re.escape(APOS_ETC)}]"
  # Inside a word: hyphens, / & _ between its parts, a dot before a letter (branch.the).
  joiner = f"(?:[-/&_{HYPHENS}]|\\.(?={letter}))"
  word = f"{part}(?:{joiner}{part})*"
  titles = "mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|ltd|co|corp|prof|mt|ft|gen|sen|rep|gov|capt|lt|col|sgt"
  return re.compile(
      r"(?P<url>https?://\S+|www\.\S+)"
      r"|(?P<tag></?[A-Za-z][^<>\s]*>)"
      r"|(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)*)"
      # Abbreviations: U.S.A., titles, a letter and a dot that does not end a sentence.
      r"|(?P<abbr>(?:[A-Za-z]\.){2,}|(?<![\w.])(?i:" + titles + r")\.(?![A-Za-z])"
      r"|(?<![\w.])[A-Za-z]\.(?![A-Za-z])(?! [A-Z][a-z]))"
      r"|(?P<handle>[#@]\w+)"
      # The words the lexer keeps whole around an apostrophe.
      rf"|(?P<apoword>{apos}n{apos}?(?!{letter})|{apos}[2-9]0s|{apos}(?:em|cause|till?)(?!{letter})"
      rf"|(?:ol|somethin|dunkin){apos}(?!{letter})|(?i:e'er|li'l|c'mon|nor'easter|s'mores|ev'ry|nat'l)"
      rf"|(?<!{alnum})[A-HJ-XZa-hj-xz]{etc}{letter}{{2,}}"
      rf"|(?<!{alnum}){letter}+[aeiouyAEIOUY]{etc}[aeiouA-Z]{letter}*)"
      rf"|(?P<quotes>(?:''|\u2019\u2019|``|\u2018\u2018|[{QUOTE_CHARS}]){{2,}}|[{DOUBLE_QUOTES}])"
      rf"|(?P<clitic>{apos}(?i:s|re|ve|ll|d|m)(?!{letter})|{apos}t(?=(?:is|was)\b)|(?i:n){etc}(?i:t)(?!{letter}))"
      rf"|(?P<y_apos>(?<!{alnum})[yY]{apos}(?={letter}))"
      # Numbers: digits with . , : or a fraction slash between them; a part after a word (roll3 .14).
      rf"|(?P<number>\d+(?:[.,:{NUMBER_SEPARATORS}]\d+)+|[.,:]\d+)"
      rf"|(?P<word>(?:{word})(?=(?i:n){etc}(?i:t)(?!{letter}))|{word})"
      rf"|(?P<symrun>(?P<sym>[{sets['symrun']}<>*])(?P=sym)*)"
      r"|(?P<punct>\.\.\.|--|``|''|[!?]{2,}|\S)")


def _normalize(caption: str) -> str:
  """Line breaks and the lexer's `sep` characters to spaces, soft hyphens out of words."""
  out = []
  for ch in caption:
    if (ch < "\x80" and ch not in "\r\x0b\x0c" or ch in REWRITTEN or ch in APOS_ETC or ch in HYPHENS
        or ch in QUOTE_CHARS or ch in NUMBER_SEPARATORS):
      out.append(ch if ch != "\n" else " ")
    elif ch == SOFT_HYPHEN:
      continue
    elif ch in LINE_BREAKS or char_class(ch) == "sep":
      out.append(" ")
    else:
      out.append(ch)
  return "".join(out)


def ptb_tokenize(caption: str) -> str:
  """One caption -> space-joined lowercased tokens without punctuation, as pycocoevalcap's."""
  tokens = []
  for m in _pattern().finditer(_normalize(caption)):
    kind, text = m.lastgroup, m.group()
    if kind == "clitic":
      tokens.append(text.translate(ASCII_APOS))
    elif kind == "word":
      tokens.extend(SPLIT_WORDS.get(text.lower(), (text,)))
    elif kind == "quotes":
      tokens.append("".join(QUOTE_FORMS.get(ch, ch) for ch in text))
    elif kind == "punct" and text in NUMBER_SEPARATORS[1:]:
      continue  # alone, the lexer deletes it
    elif kind == "punct":
      tokens.append("-" if text in HYPHENS else REWRITTEN.get(text, QUOTE_FORMS.get(text, text)))
    else:
      tokens.append(text)
  return " ".join(t.lower() for t in tokens if t not in DROPPED)


def stanford_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
  """The reference's tokenization: pycocoevalcap's PTBTokenizer (needs Java), with the line
  breaks Java sees (LINE_BREAKS) made spaces, so that no caption moves to another's line."""
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # pylint: disable=g-import-not-at-top
  spaces = str.maketrans(dict.fromkeys(LINE_BREAKS, " "))
  return PTBTokenizer().tokenize({k: [{"caption": c.translate(spaces)} for c in v] for k, v in captions.items()})


def _regenerate() -> None:
  """Asks the Stanford lexer (pycocoevalcap's, through Java) what it does with every code point
  in five contexts and writes the class table."""
  points = [c for c in range(0x80, 0x10000) if not 0xD800 <= c < 0xE000 and chr(c) not in LINE_BREAKS]
  contexts = ("a {} b", "a{}b", "1{}2", "{}{}")
  probes = [ctx.replace("{}", chr(c)) for c in points for ctx in contexts]
  out = stanford_tokenize({i: [p] for i, p in enumerate(probes)})
  classes = []
  for k, c in enumerate(points):
    alone, joined, digits, twice = (out[k * len(contexts) + j][0] for j in range(len(contexts)))
    x = chr(c).lower()
    if alone == "a b":
      classes.append("sep")
    elif joined == f"a{x}b":
      classes.append("word" if digits == f"1{x}2" else "mark")
    else:
      classes.append("symrun" if twice == x + x else "sym")
  ranges = []
  for c, k in zip(points, classes):
    if ranges and ranges[-1][2] == k and ranges[-1][1] == c - 1:
      ranges[-1][1] = c
    else:
      ranges.append([c, c, k])
  with open(TABLE, "w") as f:
    json.dump({"lexer": "Stanford CoreNLP 3.4.1 PTBTokenizer (pycocoevalcap 1.2)", "ranges": ranges}, f)
  print(f"wrote {len(ranges)} ranges to {TABLE}")


if __name__ == "__main__":
  if sys.argv[1:] != ["--regenerate"]:
    sys.exit("error: expected --regenerate (python -m flamingo_jax.evaluate.metrics.ptb --regenerate; "
             "needs Java and pycocoevalcap)")
  _regenerate()
