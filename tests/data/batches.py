"""Comparing pipeline batches in the data tests."""
import numpy as np


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
  """Two lists of {dataset: {field: array}} batches are equal, field by field."""
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for name in x:
      for key in x[name]:
        np.testing.assert_array_equal(x[name][key], y[name][key], err_msg=f"{name}/{key}")
