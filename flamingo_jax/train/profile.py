"""Where a step's device time goes: a `jax.profiler` trace of a few steps, summed per XLA op and
per part of the model (the op's source scope in the compiled program).

  with jax.profiler.trace(trace_dir):
    ...run 3 steps...
  rows = summarize(trace_dir, compiled.as_text(), steps=3)
  print("\n".join(table(rows)))
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

# First match wins: an op's scope (its `op_name` metadata, e.g.
# "jit(train_step)/jvp(Flamingo)/vision/resblocks_3/in_proj/dot_general", or .../vision/resblocks/...
# under scan) -> part of the step.
PARTS = (("/vision/", "vision tower"), ("/perceiver/", "resampler"), ("xattn", "cross-attention"),
         ("logits", "LM head + loss"), ("cross_entropy", "LM head + loss"), ("log_softmax", "LM head + loss"),
         ("/lm/", "LM layers"), ("/layers/", "LM layers"), ("/block", "LM layers"))
OTHER = "optimizer + other"

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*?op_name=\"([^\"]*)\"", re.M)


def part_of(op_name: str) -> str:
  """The part of the step an op belongs to, from its scope; the optimizer and the gradient
  bookkeeping outside any module are `OTHER`."""
  return next((part for key, part in PARTS if key in op_name), OTHER)


def op_scopes(hlo_text: str) -> dict[str, str]:
  """{HLO instruction name: its op_name scope} of a compiled program's text."""
  return {m.group(1): m.group(2) for m in _INSTRUCTION.finditer(hlo_text)}


def _trace_events(trace_dir: str) -> list[dict]:
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
  with gzip.open(max(files, key=os.path.getmtime)) as f:
    return json.load(f)["traceEvents"]


def device_op_times(events: list[dict], scopes: dict[str, str]) -> tuple[dict[str, float], float]:
  """({op: total microseconds}, busy microseconds) of the ops of the compiled program (ops named
  by `scopes`, or by an "hlo_op" argument as GPU kernels are), on the device's tracks where the
  trace has any ("/device:GPU:0"), else the host's (a CPU run). Busy time is the union of the
  ops' intervals, so ops overlapping on several streams or threads are not counted twice."""
  per_op, spans = collections.Counter(), []
  # On a GPU the host threads that launch the kernels carry the ops' names too: keep the device's.
  device_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                 and (e.get("args") or {}).get("name", "").startswith("/device:")}
  for e in events:
    if e.get("ph") != "X" or "dur" not in e or (device_pids and e.get("pid") not in device_pids):
      continue
    op = (e.get("args") or {}).get("hlo_op") or e.get("name", "")
    if op not in scopes:
      continue
    per_op[op] += float(e["dur"])
    spans.append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
  busy, end = 0.0, float("-inf")
  for start, stop in sorted(spans):
    if stop > end:
      busy += stop - max(start, end)
      end = stop
  return dict(per_op), busy


def summarize(trace_dir: str, hlo_text: str, steps: int, top: int = 12) -> dict:
  """Per step: device-busy ms, ms per part of the model and the `top` ops (ms, part, scope)."""
  scopes = op_scopes(hlo_text)
  per_op, busy = device_op_times(_trace_events(trace_dir), scopes)
  if not per_op:
    raise ValueError(f"the trace under {trace_dir} has no op of the compiled program")
  parts = collections.Counter()
  for op, us in per_op.items():
    parts[part_of(scopes[op])] += us
  total = sum(per_op.values())
  ms = lambda us: us / 1e3 / steps
  return {"busy_ms": ms(busy), "op_ms": ms(total),
          "parts": {p: {"ms": ms(us), "share": us / total} for p, us in parts.most_common()},
          "ops": [{"op": op, "ms": ms(us), "share": us / total, "part": part_of(scopes[op]),
                   "scope": scopes[op]} for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]]}


def table(summary: dict) -> list[str]:
  """The summary as lines for a terminal."""
  lines = [f"device time per step: {summary['op_ms']:.1f} ms in ops ({summary['busy_ms']:.1f} ms busy)"]
  lines += [f"  {part:<18} {v['ms']:8.2f} ms  {v['share']:6.1%}" for part, v in summary["parts"].items()]
  lines.append("top ops:")
  lines += [f"  {o['op'][:28]:<28} {o['ms']:8.2f} ms  {o['share']:6.1%}  {o['part']:<18} {o['scope'][-70:]}"
            for o in summary["ops"]]
  return lines
