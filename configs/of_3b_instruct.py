"""OpenFlamingo-3B-vitl-mpt1b-langinstruct: as of_3b, on the Dolly-instruction-tuned MPT-1B."""
from configs import of_3b


def get_config(arg: str | None = None):
  c = of_3b.get_config(arg).unlock()
  c.lm_path = c.tokenizer_path = "checkpoints/mpt-1b-redpajama-200b-dolly"
  return c.lock()
