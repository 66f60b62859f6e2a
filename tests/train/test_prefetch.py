"""The training loop's background reader: same batches in the same order as reading them in the
loop, the data position of the batch last handed out (not the reader's, which runs ahead), and
the reader's errors raised in the loop."""
import json
import threading

import pytest

from flamingo_jax.train import prefetch


class _Counter:
  """A stand-in data iterator: batch i is i; its state is the next index."""

  def __init__(self, fail_at: int | None = None):
    self.next_index, self.fail_at, self.threads = 0, fail_at, set()

  def fetch(self) -> int:
    self.threads.add(threading.current_thread().name)
    if self.next_index == self.fail_at:
      raise ValueError(f"bad shard at {self.next_index}")
    self.next_index += 1
    return self.next_index - 1

  def positions(self) -> dict:
    return {"laion": {"next_index": self.next_index}}


def _state(position: prefetch.Position) -> dict:
  return json.loads(position.get_state())


def test_same_order_positions_of_the_batch_handed_out_and_reading_ahead():
  source = _Counter()
  with prefetch.Prefetch(source.fetch, source.positions, depth=2) as reader:
    with pytest.raises(RuntimeError, match="no batch"):
      reader.positions()
    got = [reader.next() for _ in range(5)]
    assert got == [0, 1, 2, 3, 4]
    assert _state(reader.positions()["laion"]) == {"next_index": 5}  # after batch 4, whatever was read ahead
    while source.next_index < 5 + 2:  # the reader fills its queue ahead of the loop
      pass
  assert source.threads == {"flamingo_jax-prefetch"}  # read in the background thread only
  ahead = source.next_index
  assert ahead in (7, 8)  # depth 2 queued (+ 1 read when the queue was full); stopped after leaving


def test_the_readers_error_is_raised_in_place_of_its_batch():
  source = _Counter(fail_at=3)
  with prefetch.Prefetch(source.fetch, source.positions) as reader:
    assert [reader.next() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad shard at 3"):
      reader.next()
    assert _state(reader.positions()["laion"]) == {"next_index": 3}
