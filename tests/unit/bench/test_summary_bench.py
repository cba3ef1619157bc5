"""tools/bench/summary.py: the generated region is replaced in place, text around it is kept, and
every number in it comes from the JSON reports (a claim row follows the report it reads)."""

from __future__ import annotations

import json
from pathlib import Path

from tools.bench import summary


def _paper(ratio: float) -> dict:
    cell = {"ferret_best_oacc": 0.8, "unconstrained_minus_oracle_points": -1.0,
            "DAPPLE": {"oacc": 0.7, "ratio": ratio}, "1-Skip": {"oacc": 0.9}}  # fmt: skip
    return {
        "command": "python tools/bench/run_all.py --quick --only paper",
        "seconds": 12.0,
        "settings": {"samples_per_seed": 64, "seeds": [0], "devices": [1], "quick": True},
        "summary": {
            "headline": {"Ferret|mnist|4|1": cell},
            "equal_memory_points": {"mnist|4|1|DAPPLE": 2.0},
            "vs_ferret_unconstrained_points": {"mnist|4|1|Ferret no-comp (unconstrained)": -0.7},
        },
    }


def test_region_is_regenerated_and_the_rest_kept(tmp_path: Path):
    out = tmp_path / "benchmarks"
    out.mkdir()
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Title\n\nintro\n\n{summary.BEGIN}\nstale 9.99x\n{summary.END}\n\nhand-written tail\n")
    (out / "paper.json").write_text(json.dumps(_paper(2.5)))
    summary.write(doc, out)
    text = doc.read_text()
    assert text.startswith("# Title\n\nintro\n") and text.endswith("hand-written tail\n")
    assert "stale" not in text and text.count(summary.BEGIN) == 1
    assert "max 2.50x" in text and "| partly |" in text and "n.r. (90 %)" in text
    assert "+0.7 to +0.7" in text  # compensation row: iter_fisher minus none
    (out / "paper.json").write_text(json.dumps(_paper(4.0)))
    summary.write(doc, out)
    assert "max 4.00x" in doc.read_text() and "max 2.50x" not in doc.read_text()


def test_missing_reports_give_no_numbers(tmp_path: Path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Title\n")
    summary.write(doc, tmp_path)
    text = doc.read_text()
    assert summary.BEGIN in text and "No paper report" in text and "x (" not in text
