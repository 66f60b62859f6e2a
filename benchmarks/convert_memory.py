"""Peak memory of importing a ~1 GB language model: the importer streams tensors, so the peak
should be about one copy of the weights plus the runtime's baseline, never two copies.

  python benchmarks/convert_memory.py [--layers 16] [--hidden 1024] [--shard 200MB]

Builds a GPT-NeoX of that size with random weights, saves it as sharded safetensors in a temp
dir, then imports it in a fresh process and prints that process's peak RSS against the weight
size and against the same process's RSS before reading any weight.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import os, sys
sys.path.insert(0, {repo!r})
import jax, numpy as np
from configs import common
from flamingo_jax.weights import convert
from tests import reference_models as ref
cfg = common.base_config()
cfg.model = ref.jax_config("gpt_neox", 4, vocab_size={vocab}, hidden_size={hidden}, num_layers={layers},
                           num_heads=16, mlp_hidden_size={mlp}, tie_embeddings=False)
with cfg.model.unlocked():
  cfg.model.train_special_embeddings = False
def status(field):
  for line in open("/proc/self/status"):
    if line.startswith(field):
      return int(line.split()[1])  # kB
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark after the imports
before = status("VmRSS:")
variables = convert.import_weights(cfg, lm_dir={lm_dir!r})
n = sum(x.nbytes for x in jax.tree_util.tree_leaves(variables["frozen"]))
peak = status("VmHWM:")
print(f"RESULT {{before}} {{peak}} {{n}}")
"""


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=16)
  p.add_argument("--hidden", type=int, default=1024)
  p.add_argument("--vocab", type=int, default=50280)
  p.add_argument("--shard", default="200MB")
  os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  a = p.parse_args()
  import torch
  import transformers as tf
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    config = tf.GPTNeoXConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                              num_attention_heads=16, intermediate_size=4 * a.hidden,
                              use_parallel_residual=False, rotary_pct=1.0, tie_word_embeddings=False)
    with torch.no_grad():
      model = tf.GPTNeoXForCausalLM(config)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    model.save_pretrained(tmp, max_shard_size=a.shard)
    del model
    code = CHILD.format(repo=repo, vocab=a.vocab, hidden=a.hidden, layers=a.layers, mlp=4 * a.hidden,
                        lm_dir=tmp)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
    if line is None:
      sys.exit(out.stderr[-3000:])
    before, peak, imported = (int(x) for x in line.split()[1:])
    gib = 2 ** 30
    print(f"weights on disk: {size / gib:.2f} GiB in {len(os.listdir(tmp))} files; imported arrays "
          f"{imported / gib:.2f} GiB")
    print(f"importer process RSS: {before * 1024 / gib:.2f} GiB before reading weights, peak "
          f"{peak * 1024 / gib:.2f} GiB -> peak - baseline = {(peak - before) * 1024 / size:.2f} x the "
          f"weight size")


if __name__ == "__main__":
  main()
