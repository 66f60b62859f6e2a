"""Peak memory of a whole import (HF LM directory + CLIP file -> Orbax base checkpoint) of a ~1 GB
language model. The importer streams tensors and casts each one as it arrives, so the peak
should be about one copy of the converted weights above the runtime's baseline, never two.

  python benchmarks/convert_memory.py [--layers 16] [--hidden 1024] [--shard 200MB] [--dtype float32]

Builds a GPT-NeoX of that size with random weights, saves it as sharded safetensors (in --dtype)
in a temp dir, then converts it in a fresh process, as `python -m flamingo_jax.convert import`
does (trainable parts freshly initialised), and prints that process's peak RSS after reading
(before the Orbax write) and after the write, against the weight size and the baseline RSS of
the same process before reading any weight. `--dtype bfloat16` stores the LM in bf16 and keeps
it bf16 (frozen_dtype), as for the 9B model on TPU.
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
from flamingo_jax.weights import convert, orbax_io
from oracle import reference_models as ref
cfg = common.base_config()
cfg.model = ref.jax_config("gpt_neox", 4, vocab_size={vocab}, hidden_size={hidden}, num_layers={layers},
                           num_heads=16, mlp_hidden_size={mlp}, tie_embeddings=False)
cfg.model.frozen_dtype = {dtype!r}
def status(field):
  for line in open("/proc/self/status"):
    if line.startswith(field):
      return int(line.split()[1]) * 1024
convert.expected_variables(cfg.model)  # warm the tracing caches: not part of the weights' cost
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
before = status("VmRSS:")
variables = convert.import_weights(cfg, lm_dir={lm_dir!r}, clip_path={clip!r}, scanned=False)
n = sum(x.nbytes for x in jax.tree_util.tree_leaves(variables))
after_read = status("VmHWM:")
orbax_io.save_base_checkpoint({out!r}, cfg, variables)
print(f"RESULT {{before}} {{after_read}} {{status('VmHWM:')}} {{n}}")
print(f"SPLIT anon {{status('RssAnon:')/2**30:.2f}} file {{status('RssFile:')/2**30:.2f}}")
"""


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=16)
  p.add_argument("--hidden", type=int, default=1024)
  p.add_argument("--vocab", type=int, default=50280)
  p.add_argument("--shard", default="200MB")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  a = p.parse_args()
  os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
  import torch
  import transformers as tf
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, repo)
  from oracle import reference_models as ref
  with tempfile.TemporaryDirectory() as tmp:
    lm_dir, clip, out = (os.path.join(tmp, n) for n in ("lm", "clip.pt", "base"))
    config = tf.GPTNeoXConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                              num_attention_heads=16, intermediate_size=4 * a.hidden,
                              use_parallel_residual=False, rotary_pct=1.0, tie_word_embeddings=False)
    with torch.no_grad():
      model = tf.GPTNeoXForCausalLM(config).to(getattr(torch, a.dtype))
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    model.save_pretrained(lm_dir, max_shard_size=a.shard)
    del model
    torch.save({f"visual.{k}": v for k, v in ref._clip().visual.state_dict().items()}, clip)
    code = CHILD.format(repo=repo, vocab=a.vocab, hidden=a.hidden, layers=a.layers, mlp=4 * a.hidden,
                        dtype=a.dtype, lm_dir=lm_dir, clip=clip, out=out)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT")), None)
    if line is None:
      sys.exit(result.stderr[-3000:])
    before, after_read, peak, held = (int(x) for x in line.split()[1:])
    print([l for l in result.stdout.splitlines() if l.startswith("SPLIT")])
    gib = 2 ** 30
    files = len([f for f in os.listdir(lm_dir) if f.endswith(".safetensors")])
    print(f"LM weights on disk: {size / gib:.2f} GiB ({a.dtype}) in {files} safetensors shards; "
          f"converted variables (incl. fresh trainable parts): {held / gib:.2f} GiB")
    print(f"converter process RSS: baseline {before / gib:.2f} GiB; peak after reading "
          f"{after_read / gib:.2f} GiB (+{(after_read - before) / size:.2f}x the LM weights); peak after "
          f"the Orbax write {peak / gib:.2f} GiB (+{(peak - before) / size:.2f}x the LM weights, "
          f"+{(peak - before) / held:.2f}x the converted variables)")


if __name__ == "__main__":
  main()
