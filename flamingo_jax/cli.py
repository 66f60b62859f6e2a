"""The one error surface of the command-line tools, and their quiet start.

  if __name__ == "__main__":
    cli.run(main)                       # an absl tool
    sys.exit(cli.guard(main, argv))     # any other entry point

A known problem prints one line, `error: …`, naming the field, file or key, and exits non-zero:
2 for usage and config (`errors.UsageError` and its kinds: a bad override, sweep or plan), 1 at run time (a missing or
unreadable file, a checkpoint that does not match, bad data, a non-finite loss, or a ValueError
that our own code raised with its message). Anything else is a bug and shows its traceback, as
does every error with `--verbose` (any absl tool) or FLAMINGO_JAX_TRACEBACK=1.

Every tool is quiet by default: importing this module first quiets what a user cannot act on
(TensorFlow's C++ start-up notices, transformers' "PyTorch was not found" advice), and `guard`
keeps library logging (Orbax's and absl's INFO and WARNING lines) to errors and leaves the TPU
runtime alone where there is no TPU (an installed libtpu would print its start-up complaints).
Only our own lines remain; `--verbose` or FLAMINGO_JAX_VERBOSE=1 shows everything.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from flamingo_jax import errors
from flamingo_jax.errors import UsageError  # noqa: F401 (tools raise cli.UsageError)

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CONFIGS = os.path.join(os.path.dirname(_PACKAGE), "configs")

# Read here, before TensorFlow or transformers load: their notices are settled when they do.
VERBOSE = os.environ.get("FLAMINGO_JAX_VERBOSE", "") not in ("", "0") or "--verbose" in sys.argv[1:]
if not VERBOSE:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # oneDNN and CPU-feature notices
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# OSError: a missing, unreadable or unwritable file or directory (the message names it), an image
# PIL cannot identify; FloatingPointError: a non-finite value.
_RUNTIME_ERRORS = (OSError, FloatingPointError)


def _raised_by_us(error: BaseException) -> bool:
  """True when the innermost frame that raised `error` is flamingo_jax's or a config file's: our
  messages name the field or file; a ValueError from inside a library is more likely a bug."""
  tb = error.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  path = os.path.abspath(tb.tb_frame.f_code.co_filename) if tb else ""
  return path.startswith((_PACKAGE + os.sep, _CONFIGS + os.sep))


def exit_code(error: BaseException) -> int | None:
  """2 (usage or config), 1 (a known problem at run time) or None (a bug: show the traceback).
  Our own error classes carry their code (flamingo_jax/errors.py)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  if isinstance(error, errors.KnownError):
    return error.exit_code
  if isinstance(error, app.UsageError):
    return 2
  if isinstance(error, _RUNTIME_ERRORS):
    return 1
  if isinstance(error, (ValueError, KeyError, TypeError)) and _raised_by_us(error):
    return 1
  return None


def one_line(error: BaseException) -> str:
  """`error: <message>`: the lines of a message joined, a KeyError's quotes dropped."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return "error: " + "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


class _OurRecordsOnly:
  """A logging filter: below ERROR, only records logged by our own code (or a config file)."""

  def filter(self, record) -> bool:
    import logging  # pylint: disable=g-import-not-at-top
    return record.levelno >= logging.ERROR or os.path.abspath(record.pathname).startswith(
        (_PACKAGE + os.sep, _CONFIGS + os.sep))


def quiet_libraries() -> None:
  """Our own lines only (unless verbose): library log records below ERROR are dropped, and the
  TPU runtime is not started where there is no TPU chip."""
  if VERBOSE:
    return
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  for target in (absl_logging.get_absl_handler(), logging.getLogger()):
    if not any(isinstance(f, _OurRecordsOnly) for f in target.filters):
      target.addFilter(_OurRecordsOnly())
  _skip_absent_tpu()


def _skip_absent_tpu() -> None:
  """With libtpu installed (the test extra brings it) but no TPU chip, JAX would still start the
  TPU runtime, which prints a screenful of complaints and then is not used; JAX's own chip count
  decides. (Compiling for TPU topologies, the planner's job, loads libtpu separately.)"""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return
  from jax._src import hardware_utils, xla_bridge  # pylint: disable=g-import-not-at-top
  chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  registered = xla_bridge._backend_factories  # pylint: disable=protected-access
  if chips == 0 and "tpu" in registered and not xla_bridge.backends_are_initialized():
    # The platform stays known (lowering rules are registered for it); its client is never made.
    import dataclasses  # pylint: disable=g-import-not-at-top
    try:
      registered["tpu"] = dataclasses.replace(registered["tpu"], factory=_no_tpu_chip, fail_quietly=True)
    except TypeError:  # another JAX's registration record: its notices stay
      pass


def _no_tpu_chip():
  raise RuntimeError("no TPU chip on this machine")


def guard(main: Callable[..., int | None], *args) -> int:
  """Runs `main(*args)` (quietly, see `quiet_libraries`); a known problem becomes one line on
  stderr and its exit code."""
  quiet_libraries()
  try:
    return main(*args) or 0
  except Exception as e:  # pylint: disable=broad-except
    code = exit_code(e)
    if code is None or VERBOSE or os.environ.get("FLAMINGO_JAX_TRACEBACK", "") not in ("", "0"):
      traceback.print_exc()
      return code or 1
    _end_progress_bars()
    print(one_line(e), file=sys.stderr, flush=True)
    return code


def _end_progress_bars() -> None:
  """Closes live tqdm bars, so that an error line starts a line of its own."""
  tqdm = sys.modules.get("tqdm")
  for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
    bar.close()


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, a bad flag (an unknown --config.… field, a config file that does not
  load, a missing required flag) as one `error:` line and exit 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _usage_exit(str(e))
  except (SyntaxError, NameError, ImportError) as e:  # a config file that does not load
    _usage_exit(_config_file_message(e, argv))
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # a --config.… override
    _usage_exit(_override_message(e, argv))
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if type(flag).__name__ == "_ConfigFlag" and flag.present:
      try:
        _ = flag.value.keys  # a config file that failed to load raises here, not later in main
      except OSError as e:  # the message's last line is the cause
        _usage_exit(f"--{name}={flag.config_filename}: {str(e).strip().splitlines()[-1].strip()}")
  return rest


def _config_file_message(error: BaseException, argv: list[str]) -> str:
  """'--config=x.py: SyntaxError: invalid syntax (x.py, line 3)' for a config file that fails."""
  given = [a for a in argv[1:] if a.startswith("--") and a.partition("=")[2].split(":")[0].endswith((".py", ".json"))]
  flag = given[0].split(":")[0] if given else "a config file"
  hint = "; a .json file is a run's record, not a config file: give the .py it was made from" if flag.endswith(".json") else ""
  return f"{flag}: {type(error).__name__}: {error}{hint}"


def _usage_exit(message: str) -> None:
  print(one_line(ValueError(message)), file=sys.stderr, flush=True)
  sys.exit(2)


def _override_message(error: BaseException, argv: list[str]) -> str:
  """'--config.a.typo=1: no such config field 'typo'; Did you mean …' for a refused override."""
  text = str(error).replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip().strip("'\"").strip() for line in text.splitlines()]
  lines = [line for line in lines if line] or [type(error).__name__]
  key = lines[0] if " " not in lines[0] else ""  # a KeyError's message is the missing key
  flag = next((a for a in argv[1:] if a.startswith("--") and key and key in a.split("=")[0]), "a --config override")
  first = f"no such config field {key!r}" if key else lines[0]
  return "; ".join([f"{flag}: {first}", *lines[1:]])


def run(main: Callable[[list[str]], int | None]) -> None:
  """absl's app.run with this error surface around flag parsing and `main`, and `--verbose`."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Library start-up notices, and a traceback with every error.")
  app.run(lambda argv: sys.exit(guard(main, argv)), flags_parser=_parse_flags)
