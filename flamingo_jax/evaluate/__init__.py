"""OpenFlamingo's few-shot evaluation suite: `python -m flamingo_jax.evaluate` (see __main__.py).

Modules, one job each:
  catalog.py         the tasks, one record each (files, loader, template, decoding, metric)
  examples.py        what a task's loader gives: examples, a demonstration pool and a test split
  datasets.py        readers of the reference's files (Karpathy JSON, VQA JSON, HatefulMemes
                     jsonl, ImageFolder) and each task's loader
  prompts.py         prompt templates, decoding presets, output post-processing
  demonstrations.py  seeded random demonstrations and RICES retrieval; prompt permutations
  clip_features.py   CLIP image embeddings for RICES from the model's vision tower, cached
  inference.py       the model behind the loops: tokenization, sharded images, generation,
                     class log-likelihoods
  tasks.py           the trial loops (generation, class likelihoods)
  scoring.py         a trial's score from its outputs, one function per metric
  report.py          results JSON, markdown table and plot beside the published numbers
  runner.py          the stages of a run (load, evaluate every task, report)
  protocol.py        where we differ from the reference's evaluation, each with its switch
  metrics/           CIDEr-D (ptb.py: pycocoevalcap's tokenizer), VQA accuracy (+ OK-VQA stemming),
                     ROC AUC and top-1

Where the reference is wrong its behaviour is kept behind a switch (protocol.py) and the
correct one is the default; where it is merely particular (VQA normalisation, CIDEr's tokenizer
and length quirk, decoding's length_penalty 0), it is reproduced.
"""
