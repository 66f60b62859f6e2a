"""Results as JSON, as a markdown table and as a plot, beside OpenFlamingo's published numbers.

Published numbers: `data/published_results.json` (the OpenFlamingo technical report's full tables,
random demonstrations with the std over 3 seeds, and RICES). Our results use the reference's
JSON layout per task: [{"shots", "trials", "mean", "stddev"}].
"""
from __future__ import annotations

import io
import json
import logging
import os
from typing import Any

from flamingo_jax import paths
from flamingo_jax.evaluate import catalog

_PUBLISHED = os.path.join(os.path.dirname(__file__), "data", "published_results.json")


def load_published() -> dict:
  with open(_PUBLISHED) as f:
    return json.load(f)


def published_series(published: dict, task: str, model: str | None, demos: str) -> dict | None:
  """{shots: (mean, std or None)} of a released model on a task, or None if not published."""
  entry = published.get(demos, {}).get(task, {}).get(model or "")
  if entry is None:
    return None
  std = entry.get("stddev", [None] * len(entry["mean"]))
  return {s: (m, d) for s, m, d in zip(published["shots"], entry["mean"], std)}


def _fmt(mean, std=None) -> str:
  if mean is None:
    return "n/a"
  return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def markdown_table(results: dict[str, list[dict]], model: str | None, demos: str,
                   published: dict | None = None) -> str:
  """One block of rows per task: ours, then the published model's numbers for the same shots."""
  published = published or load_published()
  shots = sorted({r["shots"] for rows in results.values() for r in rows})
  lines = ["| task (metric) | model | " + " | ".join(f"{s}-shot" for s in shots) + " |",
           "|---|---|" + "---|" * len(shots)]
  for task, rows in results.items():
    by_shot = {r["shots"]: r for r in rows}
    metric = catalog.get_task(task).metric
    n = max((len(r["trials"]) for r in rows), default=0)
    ours = [_fmt(by_shot[s]["mean"], by_shot[s]["stddev"] if n > 1 else None) if s in by_shot else ""
            for s in shots]
    label = f"flamingo_jax ({n} seed{'s' * (n != 1)})"
    lines.append(f"| {task} ({metric}) | {label} | " + " | ".join(ours) + " |")
    series = published_series(published, task, model, demos)
    if series:
      name = published["models"].get(model, model)
      cells = [_fmt(*series[s]) if s in series else "" for s in shots]
      lines.append(f"| | {name} (published, {demos}) | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict]], model: str | None, demos: str, path: str,
         published: dict | None = None) -> bool:
  """One panel per task: our mean (± std) per shot count and the published curve. False (and a
  warning) if matplotlib is missing."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("matplotlib is not installed: no plot written (pip install matplotlib)")
    return False
  published = published or load_published()
  tasks = list(results)
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    rows = [r for r in sorted(results[task], key=lambda r: r["shots"]) if r["mean"] is not None]
    ax.errorbar([r["shots"] for r in rows], [r["mean"] for r in rows],
                yerr=[r["stddev"] or 0.0 for r in rows], marker="o", capsize=3, label="flamingo_jax")
    series = published_series(published, task, model, demos)
    if series:
      xs = sorted(series)
      ax.errorbar(xs, [series[x][0] for x in xs], yerr=[series[x][1] or 0.0 for x in xs],
                  marker="s", linestyle="--", capsize=3,
                  label=f"{published['models'].get(model, model)} (published)")
    ax.set_title(task)
    ax.set_xlabel("shots")
    ax.set_ylabel(catalog.get_task(task).metric)
    ax.set_xticks(sorted({r["shots"] for r in results[task]} | set(series or {})))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"demonstrations: {demos}")
  fig.tight_layout()
  image = io.BytesIO()
  fig.savefig(image, format="png", dpi=120)
  plt.close(fig)
  paths.write(path, image.getvalue())
  return True


def protocol_line(used: dict | None) -> str:
  """Which protocol the numbers were measured with (evaluate/protocol.py), under the table."""
  if not used:
    return ""
  switches = [k for k, v in used.items() if k != "protocol" and v]
  return (f"\nProtocol: {used['protocol']}; the reference's behaviour for: "
          f"{', '.join(switches) if switches else 'none'} (docs/evaluation.md#protocol).\n")


def write_report(out_dir: str, results: dict[str, list[dict]], meta: dict[str, Any],
                 model: str | None, demos: str) -> dict[str, str]:
  """Writes results.json, results.md and results.png into out_dir; returns their paths."""
  out = {k: paths.join(out_dir, f"results.{k}") for k in ("json", "md", "png")}
  paths.write(out["json"], json.dumps({"meta": meta, "results": results}, indent=1, default=str))
  paths.write(out["md"], markdown_table(results, model, demos) + protocol_line(meta.get("protocol")))
  if not plot(results, model, demos, out["png"]):
    del out["png"]
  return out
