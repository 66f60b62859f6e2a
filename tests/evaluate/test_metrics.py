"""Metrics against their oracles: pycocoevalcap (CIDEr), OpenFlamingo's copy of the official VQA
evaluation (VQA accuracy, post-processing), scikit-learn (ROC AUC)."""
import json
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


@java
def test_ptb_tokenize_matches_stanford_tokenizer():
  pytest.importorskip("pycocoevalcap")
  theirs = cider.stanford_tokenize({i: [c] for i, c in enumerate(CAPTIONS)})
  for i, c in enumerate(CAPTIONS):
    assert cider.ptb_tokenize(c) == theirs[i][0], c


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
