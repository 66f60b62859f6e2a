"""Comparing a sweep's points from their TensorBoard logs: a markdown table, a CSV and a PNG
(every point's loss curve, and each point's final loss against the swept values) at the root.

TensorBoard pointed at the root shows the points side by side too (each is a run under it).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
from etils import epath

from flamingo_jax import paths
from flamingo_jax.sweep import runner
from flamingo_jax.train import goodput, metrics

# Beside each dataset's "loss_<name> final" and "loss_<name> best" (the mixture's datasets).
COLUMNS = ("validation loss final", "validation loss best", "held-out loss", "held-out loss, blank images",
           "samples/s", "MFU", "goodput", "restarts")


def columns(datasets: list[str]) -> list[str]:
  """The table's columns after the point and the swept keys."""
  per_dataset = [f"loss_{n} {which}" for n in datasets for which in ("final", "best")]
  return ["status", "steps", "loss final", *per_dataset, *COLUMNS]


def collect(root: str) -> tuple[list[str], list[dict[str, Any]], dict[str, dict[int, float]], list[str]]:
  """(swept keys, one row per point, {point: {step: loss}}, the datasets of the points' mixtures)
  from the root's sweep.json and each point's workdir."""
  root_dir = epath.Path(paths.resolve(root))
  spec_path = root_dir / runner.SWEEP_FILE
  if not spec_path.exists():
    raise FileNotFoundError(f"--workdir={root}: no {runner.SWEEP_FILE}: not a sweep's root")
  spec = json.loads(spec_path.read_text())
  keys = list(dict.fromkeys(k for p in spec["points"] for k in p["overrides"]))
  rows, curves, datasets = [], {}, {}
  for p in spec["points"]:
    directory = root_dir / p["name"]
    config = json.loads((directory / runner.POINT_FILE).read_text())["config"]
    total = config["train"]["num_steps"]
    mixture = config["data"].get("mixture", "laion,mmc4")  # (recorded before mixtures were a field)
    datasets.update(dict.fromkeys(n.strip() for n in mixture.split(",") if n.strip()))
    steps = runner.steps_done(directory)
    scalars = metrics.read_scalars(str(directory)) if list(directory.glob("events.out.tfevents*")) else {}
    row = {"point": p["name"], **{k: p["overrides"].get(k, "") for k in keys},
           "status": "done" if runner.finished(directory, total) else ("partial" if steps else "not started"),
           "steps": f"{steps}/{total}"}
    row.update(_metric_columns(scalars, list(datasets)))
    account = directory / goodput.FILE  # train/goodput.py: where the point's time went
    if account.exists():
      recorded = json.loads(account.read_text())
      row.update(goodput=recorded["goodput"], restarts=recorded["restarts"])
    rows.append(row)
    curves[p["name"]] = scalars.get("loss", {})
  return keys, rows, curves, list(datasets)


def _metric_columns(scalars: dict[str, dict[int, float]], datasets: list[str]) -> dict[str, Any]:
  last = lambda tag: scalars[tag][max(scalars[tag])] if scalars.get(tag) else None
  best = lambda tag: min(scalars[tag].values()) if scalars.get(tag) else None
  median = lambda tag: float(np.median(list(scalars[tag].values()))) if scalars.get(tag) else None
  losses = {f"loss_{n} {which}": f(f"loss_{n}") for n in datasets for which, f in (("final", last), ("best", best))}
  return {"loss final": last("loss"), **losses,
          "validation loss final": last("val/loss"), "validation loss best": best("val/loss"),
          "held-out loss": last("eval/loss_real_images"),
          "held-out loss, blank images": last("eval/loss_blank_images"),
          "samples/s": median("perf/samples_per_s"), "MFU": median("perf/mfu")}


def markdown(keys: list[str], rows: list[dict[str, Any]], datasets: list[str]) -> str:
  header = ["point", *keys, *columns(datasets)]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    lines.append("| " + " | ".join(_cell(row.get(h)) for h in header) + " |")
  return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
  if value is None or value == "":
    return "–"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def write(root: str) -> str:
  """Writes summary.md, summary.csv and summary.png at the root; returns the table."""
  keys, rows, curves, datasets = collect(root)
  root_dir = epath.Path(paths.resolve(root))
  table = markdown(keys, rows, datasets)
  (root_dir / "summary.md").write_text(table)
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=["point", *keys, *columns(datasets)])
  writer.writeheader()
  writer.writerows(rows)
  (root_dir / "summary.csv").write_text(out.getvalue())
  (root_dir / "summary.png").write_bytes(plot(keys, rows, curves))
  return table


def plot(keys: list[str], rows: list[dict[str, Any]], curves: dict[str, dict[int, float]]) -> bytes:
  """PNG bytes: the loss curves of all points, and the final loss against each swept value."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 1 + len(keys), figsize=(5 * (1 + len(keys)), 4), squeeze=False)
  for name, curve in curves.items():
    steps = sorted(curve)
    axes[0, 0].plot(steps, [curve[s] for s in steps], label=name)
  axes[0, 0].set(xlabel="step", ylabel="training loss", title="loss curves")
  axes[0, 0].legend(fontsize=7)
  for ax, key in zip(axes[0, 1:], keys):
    values = [str(row[key]) for row in rows]
    order = list(dict.fromkeys(values))
    finals = [row["loss final"] for row in rows]
    ax.scatter([order.index(v) for v in values], [np.nan if f is None else f for f in finals])
    ax.set_xticks(range(len(order)), order)
    ax.set(xlabel=key, ylabel="final training loss", title=f"final loss vs {key.rsplit('.', 1)[-1]}")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  return buf.getvalue()
