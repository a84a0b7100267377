"""Results of an eval: a table for the terminal, JSON, and an HTML page with charts.

The HTML is one self-contained file (inline SVG, no scripts) so it can be
attached to a CI run or opened from disk.
"""

from __future__ import annotations

import html
import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runner import RunResult


@dataclass
class TaskSummary:
    task: str
    category: str
    runs: int
    passed: int
    steps_mean: float
    wall_mean: float
    wall_stdev: float
    tokens_mean: float
    failures: list[str]

    @property
    def rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0


def _reason_kind(reason: str) -> str:
    """The failure's kind: the phrase before the first colon or parenthesis."""
    head = reason.split(":", 1)[0].split("(", 1)[0].strip()
    return head or "unknown"


def summarize(results: list[RunResult]) -> tuple[list[TaskSummary], dict[str, Any]]:
    order: list[str] = []
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        if result.task not in groups:
            order.append(result.task)
        groups.setdefault(result.task, []).append(result)
    tasks: list[TaskSummary] = []
    for name in order:
        runs = groups[name]
        walls = [r.wall_s for r in runs]
        tasks.append(
            TaskSummary(
                task=name,
                category=runs[0].category,
                runs=len(runs),
                passed=sum(r.passed for r in runs),
                steps_mean=statistics.fmean(r.steps for r in runs),
                wall_mean=statistics.fmean(walls),
                wall_stdev=statistics.stdev(walls) if len(walls) > 1 else 0.0,
                tokens_mean=statistics.fmean(r.tokens for r in runs),
                failures=[r.reason for r in runs if not r.passed],
            )
        )
    rates = [t.rate for t in tasks]
    # --repeat: the spread of the whole suite's success rate across repeats.
    by_attempt: dict[int, list[bool]] = {}
    for result in results:
        by_attempt.setdefault(result.attempt, []).append(result.passed)
    attempt_rates = [sum(v) / len(v) for _, v in sorted(by_attempt.items())]
    overall: dict[str, Any] = {
        "runs": len(results),
        "passed": sum(r.passed for r in results),
        "success_rate": (sum(r.passed for r in results) / len(results)) if results else 0.0,
        "task_success_rate_mean": statistics.fmean(rates) if rates else 0.0,
        "success_rate_per_repeat": attempt_rates,
        "success_rate_stdev": statistics.stdev(attempt_rates) if len(attempt_rates) > 1 else 0.0,
        "steps_mean": statistics.fmean(r.steps for r in results) if results else 0.0,
        "wall_s_mean": statistics.fmean(r.wall_s for r in results) if results else 0.0,
        "tokens_total": sum(r.tokens for r in results),
        "failure_reasons": dict(
            Counter(_reason_kind(r.reason) for r in results if not r.passed).most_common()
        ),
    }
    return tasks, overall


def table(tasks: list[TaskSummary], overall: dict[str, Any]) -> str:
    rows = [("task", "category", "pass", "steps", "wall s", "tokens", "first failure")]
    for t in tasks:
        rows.append(
            (
                t.task,
                t.category,
                f"{t.passed}/{t.runs}",
                f"{t.steps_mean:.1f}",
                f"{t.wall_mean:.1f}",
                f"{t.tokens_mean:.0f}",
                (t.failures[0] if t.failures else "")[:70],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    ]
    lines.append(
        f"overall: {overall['passed']}/{overall['runs']} passed "
        f"({100 * overall['success_rate']:.1f}%), mean {overall['steps_mean']:.1f} steps, "
        f"{overall['wall_s_mean']:.1f} s, {overall['tokens_total']} tokens in all"
    )
    if overall["failure_reasons"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in overall["failure_reasons"].items())
        lines.append(f"failures: {reasons}")
    return "\n".join(lines)


def _bars(title: str, values: list[tuple[str, float]], unit: str, top: float | None = None) -> str:
    """A horizontal bar chart as inline SVG."""
    row, label_w, bar_w = 18, 190, 360
    peak = top if top is not None else max((v for _, v in values), default=0.0) or 1.0
    height = 28 + row * len(values)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 90}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(values):
        y = 26 + i * row
        width = bar_w * (value / peak if peak else 0.0)
        parts.append(f'<text x="0" y="{y + 12}">{html.escape(label)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{width:.1f}" height="{row - 5}" '
            'fill="#4a7bd0"/>'
        )
        shown = f"{100 * value:.0f}%" if unit == "%" else f"{value:.1f} {unit}".strip()
        parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 12}">{shown}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_report(tasks: list[TaskSummary], overall: dict[str, Any], meta: dict[str, Any]) -> str:
    charts = [
        _bars("Success rate per task", [(t.task, t.rate) for t in tasks], "%", top=1.0),
        _bars("Mean steps", [(t.task, t.steps_mean) for t in tasks], ""),
        _bars("Mean wall time", [(t.task, t.wall_mean) for t in tasks], "s"),
        _bars("Mean tokens", [(t.task, t.tokens_mean) for t in tasks], ""),
    ]
    reasons = overall["failure_reasons"]
    if reasons:
        charts.append(_bars("Failure reasons", [(k, float(v)) for k, v in reasons.items()], ""))
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(cell))}</td>"
            for cell in (
                t.task,
                t.category,
                f"{t.passed}/{t.runs}",
                f"{t.steps_mean:.1f}",
                f"{t.wall_mean:.1f} ± {t.wall_stdev:.1f}",
                f"{t.tokens_mean:.0f}",
                "; ".join(t.failures)[:400],
            )
        )
        + "</tr>"
        for t in tasks
    )
    settings = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in meta.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>selfagent eval</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
        "svg{display:block;margin:1em 0}</style></head><body>"
        f"<h1>selfagent eval</h1><ul>{settings}</ul>"
        f"<p><b>{overall['passed']}/{overall['runs']} runs passed "
        f"({100 * overall['success_rate']:.1f}%)</b>; per repeat: "
        f"{', '.join(f'{100 * r:.0f}%' for r in overall['success_rate_per_repeat'])} "
        f"(stdev {100 * overall['success_rate_stdev']:.1f} points); mean "
        f"{overall['steps_mean']:.1f} steps, {overall['wall_s_mean']:.1f} s per run; "
        f"{overall['tokens_total']} tokens in all.</p>"
        + "".join(charts)
        + "<table><tr><th>task</th><th>category</th><th>passed</th><th>steps</th>"
        "<th>wall s</th><th>tokens</th><th>failures</th></tr>" + rows + "</table></body></html>\n"
    )


def write(out_dir: Path, results: list[RunResult], meta: dict[str, Any]) -> tuple[Path, Path, str]:
    """Writes results.json and report.html into ``out_dir``; returns them and the table."""
    tasks, overall = summarize(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "meta": meta,
        "overall": overall,
        "tasks": [{**vars(t), "success_rate": t.rate} for t in tasks],
        "runs": [r.to_json() for r in results],
    }
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    html_path = out_dir / "report.html"
    html_path.write_text(html_report(tasks, overall, meta))
    return json_path, html_path, table(tasks, overall)
