"""`helexa-bench report`: the latest-build medians as Markdown, plus a
side-by-side table where several targets ran the same model and scenario, so helexa can be
compared with another engine on the same hardware at a glance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = [
    "Host",
    "GPU",
    "Model",
    "Scenario",
    "SHA",
    "Prompt tok",
    "TTFT s",
    "Decode tok/s",
    "Total s",
    "Samples",
]


def _num(value: float | int | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _cell(value: Any) -> str:
    return "–" if value is None or value == "" else str(value).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _scenario_key(row: dict[str, Any]) -> tuple[str, int, str]:
    return (row["model_id"], row["prompt_size_approx"] or 0, row["scenario_id"])


def summary_table(summary: Sequence[dict[str, Any]]) -> list[str]:
    rows = [
        [
            _cell(r["target_name"]),
            _cell(r.get("gpu")),
            _cell(r["model_id"]),
            _cell(r["scenario_id"]),
            _cell(r["git_sha"]),
            _cell(r.get("prompt_tokens")),
            _num(r["ttft_s_median"], 3),
            _num(r["decode_tps_median"], 1),
            _num(r["total_s_median"], 3),
            str(r["samples"]),
        ]
        for r in sorted(summary, key=lambda r: (r["target_name"], *_scenario_key(r)))
    ]
    return _table(COLUMNS, rows)


def comparison_table(summary: Sequence[dict[str, Any]], baseline: str | None = None) -> list[str]:
    """One row per (model, scenario) that two or more targets ran: each target's TTFT and
    tok/s, and its tok/s as a multiple of the baseline's (the given target, else the first)."""
    cells: dict[tuple[str, int, str], dict[str, dict[str, Any]]] = {}
    for s in summary:
        cells.setdefault(_scenario_key(s), {})[s["target_name"]] = s
    shared = {k: v for k, v in cells.items() if len(v) > 1}
    if not shared:
        return []
    targets = sorted({t for v in shared.values() for t in v})
    if baseline in targets:
        targets.remove(baseline)
        targets.insert(0, baseline)
    base = targets[0]
    header = ["Model", "Scenario"]
    for t in targets:
        header += [f"{t} TTFT s", f"{t} tok/s"]
        if t != base:
            header.append(f"{t} vs {base}")
    rows = []
    for (model, _, scenario), by_target in sorted(shared.items()):
        row = [_cell(model), _cell(scenario)]
        base_tps = by_target.get(base, {}).get("decode_tps_median")
        for t in targets:
            r: dict[str, Any] | None = by_target.get(t)
            tps = r["decode_tps_median"] if r else None
            row += [_num(r["ttft_s_median"] if r else None, 3), _num(tps, 1)]
            if t != base:
                ratio = tps / base_tps if tps is not None and base_tps else None
                row.append("–" if ratio is None else f"{ratio:.2f}×")
        rows.append(row)
    return _table(header, rows)


def render_markdown(summary: Sequence[dict[str, Any]], baseline: str | None = None) -> str:
    """The whole report; an empty store says so rather than printing an empty table."""
    if not summary:
        return "No benchmark runs stored yet.\n"
    lines = ["## Latest build per cell (medians over ok runs)", "", *summary_table(summary)]
    comparison = comparison_table(summary, baseline)
    if comparison:
        base = baseline if baseline in {r["target_name"] for r in summary} else None
        note = f"decode tok/s vs {base}" if base else "decode tok/s vs the first target"
        lines += ["", f"## Targets compared (ratio: {note})", "", *comparison]
    return "\n".join(lines) + "\n"
