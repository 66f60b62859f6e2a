"""OpenFlamingo-4B-vitl-rpj3b-langinstruct: as of_4b, on RedPajama-INCITE-Instruct-3B."""
from configs import of_4b


def get_config(arg: str | None = None):
  c = of_4b.get_config(arg).unlock()
  c.lm_path = c.tokenizer_path = "checkpoints/RedPajama-INCITE-Instruct-3B-v1"
  return c.lock()
