"""The results document of one ``neox eval`` run, written whole after every finished task.

One JSON file holds lm-eval's ``results`` block (keys like ``acc,none``), a flat
``metrics`` map (task -> metric -> value and stderr), and everything needed to
reproduce or compare the numbers (``config``: what was evaluated, lm-eval's
version, task versions, few-shot, limit, batch size, dtype, device, seed, the
scoring protocol, timings). It is rewritten through a temporary file and a
rename after each task, so a reader never sees half a file and an interrupted
run keeps the tasks it finished. Per-request samples go to a JSONL file beside it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from neoxcli.fileio import atomic_write_text

FORMAT_VERSION = 1


def default_output(base: Path) -> Path:
    """``{base}/eval/results-<UTC timestamp>.json``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(base) / "eval" / f"results-{stamp}.json"


def prefixed_output(prefix: str) -> Path:
    """``{prefix}_eval_results_<local time %m-%d-%Y-%H-%M-%S>.json``: GPT-NeoX's name for ``eval_results_prefix``."""
    stamp = time.strftime("%m-%d-%Y-%H-%M-%S", time.localtime())
    return Path(f"{prefix}_eval_results_{stamp}.json")


def samples_path(output: Path) -> Path:
    """Where the per-request samples of ``output`` go: ``results-X.json`` -> ``results-X.samples.jsonl``."""
    return output.with_name(output.stem + ".samples.jsonl")


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python numbers, NaN/inf to strings, tuples to lists."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def flat_metrics(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> metric -> {value, stderr}, from lm-eval's ``metric,filter`` keys.

    The filter is dropped when it is ``none``; a stderr lm-eval could not compute
    (``N/A``, rolling metrics) is None.
    """
    flat: dict[str, dict[str, dict[str, Any]]] = {}
    for task, block in results.items():
        out: dict[str, dict[str, Any]] = {}
        for key, value in block.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            name = metric if filt == "none" else f"{metric},{filt}"
            stderr = block.get(f"{metric}_stderr,{filt}")
            out[name] = {
                "value": _plain(value),
                "stderr": _plain(stderr) if isinstance(stderr, (int, float)) else None,
            }
        flat[task] = out
    return flat


class ResultsWriter:
    """Accumulates finished tasks and rewrites the document (and samples) after each."""

    def __init__(self, output: Path, config: dict[str, Any], log_samples: bool = False) -> None:
        self.output = Path(output)
        self.log_samples = log_samples
        self.doc: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "status": "running",
            "results": {},
            "groups": {},
            "metrics": {},
            "perplexity": [],
            "config": {**config, "tasks": {}, "n_shot": {}, "n_samples": {}, "timing": {"tasks": {}}},
        }
        self._samples: list[str] = []
        self._t0 = time.time()
        self.doc["config"]["timing"]["started"] = _iso(self._t0)

    def add_task_result(self, spec: str, out: dict[str, Any], seconds: float) -> None:
        """Merge one ``simple_evaluate`` result and write everything."""
        results = out.get("results", {})
        self.doc["results"].update(_plain(results))
        self.doc["groups"].update(_plain(out.get("groups", {})))
        self.doc["metrics"].update(flat_metrics(results))
        cfg = self.doc["config"]
        cfg["tasks"].update(_plain(out.get("versions", {})))
        cfg["n_shot"].update(_plain(out.get("n-shot", {})))
        cfg["n_samples"].update(_plain(out.get("n-samples", {})))
        cfg.setdefault("task_configs", {}).update(_plain(out.get("configs", {})))
        cfg.setdefault("higher_is_better", {}).update(_plain(out.get("higher_is_better", {})))
        cfg["timing"]["tasks"][spec] = round(seconds, 3)
        if self.log_samples:
            for task, samples in (out.get("samples") or {}).items():
                for s in samples:
                    self._samples.append(json.dumps(_plain({"task": task, **s}), ensure_ascii=False))
        self.write()

    def add_perplexity(self, rows: list[dict[str, Any]]) -> None:
        self.doc["perplexity"].extend(_plain(rows))
        self.write()

    def finish(self) -> None:
        self.doc["status"] = "complete"
        self.write()

    def write(self) -> None:
        now = time.time()
        self.doc["config"]["timing"]["finished" if self.doc["status"] == "complete" else "updated"] = _iso(
            now
        )
        self.doc["config"]["timing"]["total_seconds"] = round(now - self._t0, 3)
        if self.log_samples:
            atomic_write_text(samples_path(self.output), "".join(line + "\n" for line in self._samples))
        atomic_write_text(self.output, json.dumps(self.doc, indent=2, ensure_ascii=False) + "\n")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --------------------------------------------------------------------------- renderings


def metric_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, metric): task, version, n-shot, metric, value, stderr."""
    cfg = doc.get("config", {})
    rows = []
    for task, metrics in doc.get("metrics", {}).items():
        for metric, v in metrics.items():
            rows.append(
                {
                    "task": task,
                    "version": cfg.get("tasks", {}).get(task),
                    "n_shot": cfg.get("n_shot", {}).get(task),
                    "metric": metric,
                    "value": v["value"],
                    "stderr": v["stderr"],
                }
            )
    return rows


PPL_COLUMNS = (
    "source",
    "context_length",
    "stride",
    "mode",
    "tokens",
    "token_perplexity",
    "bits_per_byte",
    "bits_per_char",
    "word_perplexity",
    "note",
)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def render_markdown(doc: dict[str, Any]) -> str:
    lines = []
    rows = metric_rows(doc)
    if rows:
        lines += ["| Task | Version | n-shot | Metric | Value | Stderr |", "|---|---|---|---|---:|---:|"]
        for r in rows:
            stderr = "" if r["stderr"] is None else f"± {_fmt(r['stderr'])}"
            cells = [r["task"], _fmt(r["version"]), _fmt(r["n_shot"]), r["metric"], _fmt(r["value"]), stderr]
            lines.append("| " + " | ".join(cells) + " |")
    ppl = doc.get("perplexity") or []
    if ppl:
        if lines:
            lines.append("")
        lines += ["| " + " | ".join(PPL_COLUMNS) + " |", "|" + "---|" * len(PPL_COLUMNS)]
        for r in ppl:
            lines.append("| " + " | ".join(_fmt(r.get(c)) for c in PPL_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def render_csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    rows = metric_rows(doc)
    if rows:
        w.writerow(["task", "version", "n_shot", "metric", "value", "stderr"])
        for r in rows:
            w.writerow([r["task"], r["version"], r["n_shot"], r["metric"], r["value"], r["stderr"]])
    ppl = doc.get("perplexity") or []
    if ppl:
        w.writerow(PPL_COLUMNS)
        for r in ppl:
            w.writerow([r.get(c) for c in PPL_COLUMNS])
    return buf.getvalue()
