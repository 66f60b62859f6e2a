"""Metrics against their oracles: pycocoevalcap (CIDEr), OpenFlamingo's copy of the official VQA
evaluation (VQA accuracy, post-processing), scikit-learn (ROC AUC)."""
import json
import os
import random
import shutil

import numpy as np
import pytest

from flamingo_jax.evaluate.metrics import cider, classification, okvqa, vqa

CAPTIONS = [
    "A man (smiling) rides a horse.", "Two dogs' toys aren't here!",
    'A "quoted" word, and 3.5 apples; also U.S.A. and e-mail.', "the man's hat -- big... really?",
    "Don't can't won't I'm you're they'll we'd", "A black-and-white photo of a cat's tail {x} [y]",
    "50% off & $3 at 10:30 a.m.", "an image with 'single quotes' here", "A CAT ON A MAT",
    "cannot gonna wanna", "  leading and trailing  ", "#hashtag @user http://x.com/a?b=1",
    "It's 5'10\" tall", "o'clock", "word...", "hello . world", "naïve café", "1,000 people",
    "e.g. this etc.", "Mr. Smith and Dr. Who", "a/b and c\\d", "x+y=z", "tab\there", "under_score",
    "dog, cat; bird: fish", "U.K. flags.", "he said ``hi''", "it's a 'test'.",
    "A 5-year-old boy plays with a 2nd-hand toy in the 1990s.", "a room w/ a view",
    "a group of kids (and adults) at the beach!!", "what's that? it's a bird",
    "a pizza w/ pepperoni 'n' cheese", "A bird perched on a branch.The sky is blue.",
    "Two giraffes standing next to each other in a field .", "It is 3 p.m. now",
]

# Five references per image and one hypothesis, COCO-like, with shared and rare n-grams.
REFS = {
    1: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
        "a person surfing on a big wave", "A man on a surfboard riding a wave.", "surfer in the ocean"],
    2: ["Two giraffes standing next to each other in a field.", "A pair of giraffes in the grass.",
        "two giraffes stand near trees", "Giraffes standing in a field.", "A couple of giraffes."],
    3: ["A plate of food with broccoli, carrots, and rice.", "A dish of rice and vegetables.",
        "food on a white plate", "Broccoli and carrots served with rice.", "a plate with food"],
    4: ["A red bus driving down a city street.", "A double decker bus on the road.",
        "the bus is red and white", "A bus parked by the sidewalk.", "red bus in a city"],
}
HYPS = {1: "a man riding a wave on a surfboard", 2: "two giraffes standing in a field",
        3: "a plate of food with rice", 4: "a train on the tracks"}

java = pytest.mark.skipif(shutil.which("java") is None, reason="Stanford PTB tokenizer needs Java")


# The classes where a tokenizer most often differs from pycocoevalcap's: typographic quotes and
# apostrophes, dashes, ellipses, U+FFFD, emoji, fractions, zero-width and soft hyphens, currency,
# other scripts, and long captions.
AWKWARD = [
    "A man\u2019s dog \u201cruns\u201d fast.", "It\u2019s a \u2018test\u2019 \u2014 really \u2013 maybe\u2026",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9", "\ufffd broken \ufffd text", "a dog \U0001F436 and a cat \U0001F431",
    "\u00bd cup and \u00be of it", "zero\u200bwidth space", "non\u00a0breaking space", "\u4e00\u53ea\u72d7 in Chinese",
    "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439 world", "\u00abquoted\u00bb text",
    "don\u2019t can\u2019t won\u2019t", "5\u00b0C outside", "price \u20ac5 or \u00a35 or 50\u00a2", "x \u00d7 y",
    "a\u2011b non-breaking hyphen", "ellipsis... and \u2026 too", "emoji at end \U0001F600", "\u2022 bullet point",
    "1/2 and a/b and 3\u20444", "O\u2019Neil\u2019s house", "rock \u2019n\u2019 roll", "the '90s and \u201990s",
    "\u201cHello,\u201d she said.", "dogs\u2019 toys", "e-mail: a@b.com", "\u00e9t\u00e9 \u00e0 Paris",
    "\u0645\u0631\u062d\u0628\u0627 and \ud55c\uad6d\uc5b4", "\u00df and \u0131", "hmm...!?", "\u00a9 2020 \u00ae \u2122",
    "\u2212 minus sign", "\u3000ideographic space", "\u2018single\u2019 and \u201adouble low\u201e",
    "\u2039angle\u203a", "x\u0301 combining accent", "\u00bf\u00a1Spanish!?", "soft\u00adhyphen", "y'all and ma'am",
    "a long caption of a man with a dog in a park on a sunny day, " * 12, "a line\u2028separator and a\u2029paragraph",
]


def awkward_captions(n: int, seed: int = 0) -> list[str]:
  """n captions of everyday words mixed with the awkward classes, quoted and punctuated as text is."""
  rng = random.Random(seed)
  words = ["a", "man", "dog", "the", "riding", "caf\u00e9", "na\u00efve", "O'Neil", "o\u2019clock", "don\u2019t", "can't",
           "it\u2019s", "dogs\u2019", "James\u2019s", "rock \u2019n\u2019 roll", "\u201990s", "'80s", "ma'am", "l\u2019homme",
           "y'all", "\u201cquoted\u201d", "\u2018single\u2019", "\u00abangle\u00bb", "\u2014", "\u2013", "\u2026", "...",
           "\u00bd", "\u00be", "\u2153", "\u00a35", "\u20ac10", "$3", "\u00a2", "\U0001F436", "\U0001F600", "\ufffd",
           "zero\u200bwidth", "soft\u00adhyphen", "non\u2011breaking", "\u4e00\u53ea\u72d7", "\u041f\u0440\u0438\u0432\u0435\u0442",
           "\u0645\u0631\u062d\u0628\u0627", "\ud55c\uad6d\uc5b4", "3.14", "1,000", "10:30", "e-mail", "U.S.A.", "Mr.", "(a)", "[b]",
           "{c}", "#tag", "@user", "x\u00b2", "5\u00b0C", "\u00a9", "\u2122", "\u2192", "\u00d7", "&", "/", "*", "!", "?", ",",
           ";", ":", "-", "'", '"', "`", "b,"]
  out = []
  for _ in range(n):
    parts = []
    for _ in range(rng.randint(1, 12)):
      w, r = rng.choice(words), rng.random()
      if r < 0.1 and w[0].isalnum():
        w = rng.choice(["\u201c%s\u201d", "\u2018%s\u2019", '"%s"', "'%s'", "(%s)", "\u00ab%s\u00bb"]) % w
      elif r < 0.25:
        possessive = w[-1].isalpha() and w[-1] != "s" and not set("'\u2019") & set(w)
        w += rng.choice([",", ".", "!", "?", "\u2026", ";", ":", "\u2014"] + (["'s", "\u2019s", "s\u2019"] if possessive else []))
      parts.append(w)
    out.append(rng.choice([" ", "  ", " \u2014 ", " \u2013 "]).join(parts) if rng.random() < 0.2 else " ".join(parts))
  return out


@java
def test_ptb_tokenize_matches_stanford_tokenizer():
  """pycocoevalcap's own tokenizer (Java) and ours give the same tokens for every caption of an
  awkward corpus, and for every character outside ASCII in seven contexts."""
  pytest.importorskip("pycocoevalcap")
  corpus = CAPTIONS + AWKWARD + awkward_captions(3000)
  points = [c for c in range(0x80, 0x10000) if not 0xD800 <= c < 0xE000] + [0x1F600, 0x1F436, 0x10000, 0x20000]
  contexts = ("a {} b", "a{}b", "1{}2", "{}{}", "x {}a", "a{} x", "The {} dog")
  corpus += [ctx.replace("{}", chr(c)) for c in points for ctx in contexts]
  theirs = cider.stanford_tokenize({i: [c] for i, c in enumerate(corpus)})
  differ = [(c, theirs[i][0], cider.ptb_tokenize(c)) for i, c in enumerate(corpus) if cider.ptb_tokenize(c) != theirs[i][0]]
  assert not differ, (len(differ), differ[:10])
  with open(EXPECTED_TOKENS) as f:
    stored = json.load(f)["captions"]
  java = cider.stanford_tokenize({i: [c] for i, (c, _) in enumerate(stored)})
  assert [expected for _, expected in stored] == [java[i][0] for i in range(len(stored))]
  # pycocoevalcap's lines: a line separator inside a caption no longer moves the next one.
  assert cider.stanford_tokenize({1: ["a\u2028b"], 2: ["c d"]}) == {1: ["a b"], 2: ["c d"]}


EXPECTED_TOKENS = os.path.join(os.path.dirname(__file__), "ptb_expected.json")


def test_ptb_tokenize_gives_the_stored_stanford_tokens():
  """Without Java: the tokens pycocoevalcap's tokenizer gave for the awkward corpus, stored
  (where Java runs, the test above checks the stored tokens are still Java's)."""
  with open(EXPECTED_TOKENS) as f:
    stored = json.load(f)["captions"]
  assert len(stored) > 500 and [c for c, _ in stored][-500:] == awkward_captions(500, seed=1)
  differ = [(c, expected, cider.ptb_tokenize(c)) for c, expected in stored if cider.ptb_tokenize(c) != expected]
  assert not differ, differ[:10]


@java
def test_cider_of_typographic_captions_is_pycocoevalcaps():
  """Captions written with typographic punctuation score the same CIDEr with our tokenizer as
  through pycocoevalcap's whole pipeline (Java tokenizer, its Cider)."""
  pytest.importorskip("pycocoevalcap")
  from pycocoevalcap.cider.cider import Cider
  refs = {k: [r.replace("'", "\u2019").replace(".", "\u2026") + " \u2014 \u201cnice\u201d" for r in v] for k, v in REFS.items()}
  hyps = {1: "a man\u2019s surfboard \u2014 riding a wave\u2026", 2: "two giraffes\u2019 field \u201cstanding\u201d",
          3: "a plate of food \u00bd rice \U0001F35A", 4: "a train on the tracks\u2026"}
  expected = 100 * Cider().compute_score(cider.stanford_tokenize(refs),
                                         cider.stanford_tokenize({k: [h] for k, h in hyps.items()}))[0]
  assert cider.caption_cider(refs, hyps) == pytest.approx(expected, rel=1e-12) and expected > 0


def test_cider_d_matches_pycocoevalcap_scorer():
  pytest.importorskip("pycocoevalcap")
  from pycocoevalcap.cider.cider import Cider
  refs = {k: [cider.ptb_tokenize(r) for r in v] for k, v in REFS.items()}
  hyps = {k: cider.ptb_tokenize(h) for k, h in HYPS.items()}
  ours, per_image = cider.cider_d(refs, hyps)
  theirs, theirs_per_image = Cider().compute_score(refs, {k: [h] for k, h in hyps.items()})
  assert ours == pytest.approx(theirs, rel=1e-12)
  np.testing.assert_allclose([per_image[k] for k in refs], theirs_per_image, rtol=1e-12)
  assert per_image[4] < per_image[1]  # the wrong caption scores lowest


@java
def test_caption_cider_matches_the_reference_pipeline():
  """pycocoevalcap end to end (Java PTB tokenizer + CIDEr-D) on raw captions, x 100."""
  pytest.importorskip("pycocoevalcap")
  from pycocoevalcap.cider.cider import Cider
  refs = cider.stanford_tokenize(REFS)
  hyps = cider.stanford_tokenize({k: [h] for k, h in HYPS.items()})
  expected = 100 * Cider().compute_score(refs, hyps)[0]
  assert cider.caption_cider(REFS, HYPS) == pytest.approx(expected, rel=1e-12)
  assert cider.caption_cider(REFS, HYPS, tokenizer="stanford") == pytest.approx(expected, rel=1e-12)


def test_caption_cider_errors():
  with pytest.raises(KeyError, match="no references"):
    cider.caption_cider(REFS, {99: "a cat"})
  with pytest.raises(ValueError, match="tokenizer"):
    cider.caption_cider(REFS, HYPS, tokenizer="nltk")


# VQA: question records in the official formats, with answers that exercise every rule.
VQA_CASES = [  # (prediction, ten human answers)
    ("two", ["2"] * 6 + ["two", "3", "2 ", "Two"]),
    ("Yes.", ["yes"] * 3 + ["no"] * 7),
    ("the red car", ["red car", "red", "a red car", "red car", "car", "red", "red", "maroon", "red",
                     "red car"]),
    ("dont know", ["don't know", "dont know", "unknown", "no idea", "don't know", "not sure", "?",
                   "none", "0", "zero"]),
    ("1,000", ["1000", "1,000", "1000", "thousand", "1,000", "1000", "many", "1000", "1 000", "lots"]),
    ("t-shirt", ["t shirt", "t-shirt", "tshirt", "shirt", "t-shirt", "t shirt", "tee", "t-shirt",
                 "shirt", "t shirt"]),
    ("3.5", ["3.5", "3.5", "3", "4", "3.5", "three and half", "3.5", "3", "3.5", "3.5"]),
    ("man's hat", ["man's hat", "hat", "mans hat", "hat", "man's hat", "cap", "hat", "hat",
                   "man's hat", "hat"]),
    ("blue; green", ["blue and green", "blue", "green", "blue green", "blue", "blue", "green", "blue",
                     "teal", "blue"]),
    ("none", ["0", "none", "zero", "0", "0", "nothing", "0", "none", "0", "0"]),
    ("Unanswerable", ["unanswerable"] * 6 + ["unsuitable", "unanswerable", "blank", "unanswerable"]),
    ("(a) dog!", ["dog", "dog", "puppy", "dog", "a dog", "dog", "dog", "dogs", "dog", "dog"]),
]


def _write_vqa_files(tmp_path, with_answer_ids: bool, confidences=None):
  questions, annotations, results = [], [], []
  for qid, (pred, answers) in enumerate(VQA_CASES):
    questions.append({"question": f"q{qid}?", "image_id": 100 + qid, "question_id": qid})
    recs = []
    for i, a in enumerate(answers):
      r = {"answer": a, "answer_confidence": (confidences or ["yes"])[i % len(confidences or ["yes"])]}
      if with_answer_ids:
        r["answer_id"] = i + 1
      recs.append(r)
    annotations.append({"question_id": qid, "image_id": 100 + qid, "question_type": "what",
                        "answer_type": "other", "answers": recs})
    results.append({"question_id": qid, "answer": pred})
  meta = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
          "license": {}}
  paths = {name: str(tmp_path / f"{name}.json") for name in ("q", "a", "r")}
  json.dump(dict(meta, questions=questions), open(paths["q"], "w"))
  json.dump(dict(meta, annotations=annotations), open(paths["a"], "w"))
  json.dump(results, open(paths["r"], "w"))
  return paths, {a["question_id"]: a["answers"] for a in annotations}, {
      r["question_id"]: r["answer"] for r in results}


@pytest.mark.parametrize("with_answer_ids", [True, False], ids=["vqav2_style", "vizwiz_style"])
def test_vqa_accuracy_matches_reference_evaluation(tmp_path, with_answer_ids):
  from open_flamingo.eval.vqa_metric import compute_vqa_accuracy
  paths, answers, preds = _write_vqa_files(tmp_path, with_answer_ids,
                                           confidences=None if with_answer_ids else ["yes", "maybe", "yes"])
  expected = compute_vqa_accuracy(paths["r"], paths["q"], paths["a"])
  assert vqa.vqa_accuracy(preds, answers) == expected
  # The per-question values too (the overall number could hide compensating errors).
  from open_flamingo.eval import vqa_metric as ref
  vqa_api = ref.VQA(paths["a"], paths["q"])
  evaluator = ref.VQAEval(vqa_api, vqa_api.loadRes(paths["r"], paths["q"]), n=6)
  evaluator.evaluate()
  for qid, pred in preds.items():
    assert 100 * vqa.question_accuracy(pred, answers[qid]) == pytest.approx(evaluator.evalQA[qid], abs=1e-4)


def test_identical_answer_records_drop_out_together():
  """VizWiz records have no id: seven identical 'yes' records are not each other's 'others'."""
  same = [{"answer": "yes", "answer_confidence": "yes"}] * 7
  other = [{"answer": "yes", "answer_confidence": "maybe"}, {"answer": "no", "answer_confidence": "yes"},
           {"answer": "no", "answer_confidence": "no"}]
  # Each of the 7: the other 'yes' is 1 match -> 1/3; the maybe-yes: 7 matches -> 1; the no's: 8 -> 1.
  assert vqa.question_accuracy("yes", same + other) == pytest.approx((7 / 3 + 3) / 10)
  # Bare strings are positional: every answer has nine others.
  assert vqa.question_accuracy("yes", ["yes"] * 10) == 1.0


def test_official_normalization_leaves_unanimous_answers_alone():
  assert vqa.question_accuracy("two", ["two"] * 10, "official") == 0.0  # prediction -> "2"
  assert vqa.question_accuracy("two", ["two"] * 10, "reference") == 1.0
  # Disagreeing answers get punctuation processing only: "dog." matches, "yes!" -> "yes " does not.
  assert vqa.question_accuracy("dog", ["dog."] * 9 + ["cat"], "official") == 1.0
  assert vqa.question_accuracy("yes!", ["yes!"] * 9 + ["no"], "official") == 0.0
  assert vqa.question_accuracy("yes!", ["yes!"] * 9 + ["no"], "reference") == 1.0
  with pytest.raises(ValueError, match="normalization"):
    vqa.question_accuracy("a", ["a"], "strict")


def test_normalization_rules():
  assert vqa.normalize_answer("  The Two dogs\n") == "2 dogs"
  assert vqa.normalize_answer("dont") == "don't"
  assert vqa.normalize_answer("1,000.") == "1000"
  assert vqa.normalize_answer("t-shirt") == "t shirt"
  assert vqa.normalize_answer("end.") == "end"
  assert vqa.normalize_answer("3.5") == "3.5"


@pytest.mark.parametrize("text", ["yes Question: what", "red, blue", "a cat Short answer:x",
                                  "fine Answer: no, yes", "plain", "Questionable", ", x"])
def test_postprocess_vqa_matches_reference(text):
  from open_flamingo.eval.vqa_metric import postprocess_vqa_generation
  assert vqa.postprocess_vqa(text) == postprocess_vqa_generation(text)


def test_ok_vqa_stemmer_rules():
  tags = {"dogs": "NNS", "running": "VBG", "leaves": "NNS", "people": "NNS", "red": "JJ", "Teams": "NNPS"}
  stemmer = okvqa.OkVqaStemmer(tokenize=str.split, pos_tag=lambda ws: [(w, tags.get(w, "NN")) for w in ws],
                               lemmatize_verb=lambda w: w[:-3], singularize=lambda w: w.rstrip("s"))
  # manual table (leaves -> leaf), -ing lemma, plural singularized, other words untouched.
  assert stemmer.stem("red dogs running leaves Teams") == "red dog runn leaf Team"
  assert okvqa.postprocess_ok_vqa("clothing Question: x", stemmer) == "cloth"


def test_ok_vqa_stemmer_matches_reference_when_nltk_data_is_present():
  nltk = pytest.importorskip("nltk")
  pytest.importorskip("inflection")
  try:
    nltk.pos_tag(nltk.tokenize.word_tokenize("dogs running"))
    nltk.stem.WordNetLemmatizer().lemmatize("running", "v")
  except LookupError:
    pytest.skip("NLTK data (punkt, tagger, wordnet) not installed")
  from open_flamingo.eval.ok_vqa_utils import postprocess_ok_vqa_generation
  for text in ["two dogs running", "leaves on trees Question:", "skateboarders, surfing"]:
    assert okvqa.postprocess_ok_vqa(text) == postprocess_ok_vqa_generation(text)


def test_roc_auc_matches_sklearn():
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  scores = np.round(rng.random(200) + 0.3 * labels, 1)  # rounded: many ties
  expected = metrics.roc_auc_score(labels, scores)
  assert classification.roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
  with pytest.raises(ValueError, match="both"):
    classification.roc_auc([1, 1], [0.2, 0.3])


def test_predict_is_softmax_over_class_scores():
  scores = np.array([[-1.0, -2.0], [-3.0, -0.5], [np.log(0.2), np.log(0.6)]])
  best, conf = classification.predict(scores)
  np.testing.assert_array_equal(best, [0, 1, 1])
  np.testing.assert_allclose(conf, [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(-2.5)), 0.75])
  np.testing.assert_allclose(classification.positive_probability(best, conf), [1 - conf[0], conf[1], conf[2]])
  assert classification.top1_accuracy([0, 1, 0], best) == pytest.approx(2 / 3)
