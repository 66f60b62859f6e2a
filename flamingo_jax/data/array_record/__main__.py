"""tar shards -> ArrayRecord files (the command line of `flamingo_jax/data/array_record`).

  python -m flamingo_jax.data.array_record --shards='/data/mmc4/{00000..01023}.tar' \\
      --out_dir=/data/mmc4_array_record
"""
from __future__ import annotations

from flamingo_jax import cli  # first: its quiet start precedes the libraries' imports

from absl import flags  # pylint: disable=g-bad-import-order

from flamingo_jax.data.array_record import convert
from flamingo_jax.data.shards import expand_shards
from flamingo_jax.paths import resolve

_SHARDS = flags.DEFINE_string("shards", None, "WebDataset tar shards: globs, {000..099} ranges, comma lists.",
                              required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Directory for the .array_record files.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Convert shards whose output already exists again.")


def main(argv):
  del argv
  counts = convert(expand_shards(_SHARDS.value), _OUT_DIR.value, overwrite=_OVERWRITE.value)
  print(f"{counts['shards']} shards converted ({counts['already_converted']} already there), "
        f"{counts['samples']} samples ({counts['unreadable_samples']} unreadable, kept as skips) "
        f"-> {resolve(_OUT_DIR.value)}")


if __name__ == "__main__":
  cli.run(main)
