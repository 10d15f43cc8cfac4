"""`helexa-bench report` Markdown (with the issue's comparison table)."""

from __future__ import annotations

from pathlib import Path

from bench_data import seed

from helexa.bench.report import COLUMNS, comparison_table, render_markdown
from helexa.bench.store import Store


def summary(tmp_path: Path) -> list[dict]:
    s = Store(tmp_path / "r.sqlite")
    seed(s)
    return s.summary()


def test_summary_table(tmp_path: Path) -> None:
    md = render_markdown(summary(tmp_path), baseline="alpha")
    lines = md.splitlines()
    assert lines[0].startswith("## Latest build")
    assert lines[2] == "| " + " | ".join(COLUMNS) + " |"
    assert COLUMNS == [
        "Host", "GPU", "Model", "Scenario", "SHA", "Prompt tok",
        "TTFT s", "Decode tok/s", "Total s", "Samples",
    ]  # fmt: skip
    assert lines[3] == "|---|---|---|---|---|---|---|---|---|---|"
    assert (
        lines[4]
        == "| alpha | 2× RTX 5090 | m1 | chat:128 | bbb2222 | 130 | 0.600 | 60.0 | 3.000 | 2 |"
    )
    assert lines[5] == (
        "| alpha | 2× RTX 5090 | m1 | concurrency:4 | bbb2222 | 130 | 0.900 | 200.0 | 5.000 | 1 |"
    )
    assert lines[6] == "| beta | CPU | m1 | chat:128 | llama-b1 | 130 | 0.250 | 30.0 | 4.000 | 1 |"


def test_comparison_table(tmp_path: Path) -> None:
    rows = summary(tmp_path)
    md = render_markdown(rows, baseline="alpha")
    assert "## Targets compared (ratio: decode tok/s vs alpha)" in md
    table = comparison_table(rows, baseline="alpha")
    assert table[0] == (
        "| Model | Scenario | alpha TTFT s | alpha tok/s | beta TTFT s | beta tok/s "
        "| beta vs alpha |"
    )
    # only chat:128 was run by both targets; beta decodes at half alpha's 60 tok/s
    assert table[2:] == ["| m1 | chat:128 | 0.600 | 60.0 | 0.250 | 30.0 | 0.50× |"]
    # the baseline comes first whatever its name
    flipped = comparison_table(rows, baseline="beta")
    assert flipped[0].startswith("| Model | Scenario | beta TTFT s")
    assert flipped[2].endswith("| 2.00× |")


def test_no_comparison_for_a_single_target(tmp_path: Path) -> None:
    rows = [r for r in summary(tmp_path) if r["target_name"] == "alpha"]
    assert comparison_table(rows) == []
    assert "Targets compared" not in render_markdown(rows)


def test_missing_values_and_empty_store(tmp_path: Path) -> None:
    row = summary(tmp_path)[0] | {
        "ttft_s_median": None,
        "decode_tps_median": None,
        "total_s_median": None,
        "samples": 0,
        "prompt_tokens": None,
        "gpu": None,
    }
    assert "| alpha | – | m1 | chat:128 | bbb2222 | – | – | – | – | 0 |" in render_markdown([row])
    assert render_markdown([]) == "No benchmark runs stored yet.\n"
