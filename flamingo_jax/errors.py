"""The errors our code raises on purpose, each with the exit code a command-line tool gives it.

The ground floor of the package: it imports nothing, so any module can raise these and `cli.py`
can recognise them without importing the modules that raise them.

  raise UsageError("--shots=-1: shot counts must be whole numbers >= 0")   # exit 2
  raise DataStateError("The data position in checkpoint 40 cannot be read: ...")  # exit 1

Each message names the field, file or key at fault; a tool prints it as one `error:` line.
"""
from __future__ import annotations


class KnownError(Exception):
  """A problem our code recognised and named; a tool exits with `exit_code` (1: at run time)."""
  exit_code = 1


class UsageError(KnownError, ValueError):
  """A bad command line or config value (a flag, an override, a sweep, a plan): exit 2."""
  exit_code = 2


class CheckpointMismatchError(KnownError, ValueError):
  """A checkpoint's keys or shapes do not match the model config."""


class UnreadableCheckpointError(KnownError, OSError):
  """A weights file or directory that cannot be read; the message names it."""


class DataStateError(KnownError, ValueError):
  """A checkpoint's data position that this job cannot use (another layout, another number of
  processes): the step is not damaged, so it is never set aside."""


class NonFiniteError(KnownError, FloatingPointError):
  """A non-finite loss, gradient or updated state; raised before anything of that step is
  checkpointed."""


def caused_by(error: BaseException, kind: type) -> bool:
  """Whether `error`, or an error it was raised from or while handling, is a `kind` (libraries
  such as Orbax re-raise what our code raised inside them)."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, kind):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False
