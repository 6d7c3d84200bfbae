"""The study's report.html: report.md's text from the same summary, figures inside, clean in a browser."""

from __future__ import annotations

import re
from pathlib import Path

from catsdogs.study.report import write_report
from tests.browser import assert_loads_cleanly
from tests.helpers import write_study


def test_compare_writes_report_html_beside_report_md(tmp_path: Path) -> None:
    study = write_study(tmp_path, {"adam": [0.9, 0.95, 0.9], "momentum": [0.55, 0.5, 0.55]})
    write_report(study)
    html = (study / "report.html").read_text()
    markdown = (study / "report.md").read_text()
    assert "<h1>Optimizer study: adam, momentum</h1>" in html and markdown.startswith("# Optimizer study: adam")
    assert "adam (91.7 ± 2.9%) &gt; momentum (53.3 ± 2.9%)." in html
    assert re.findall(r'<img src="(data:image/png;base64,)', html) == ["data:image/png;base64,"] * 2
    loaded = assert_loads_cleanly(study / "report.html", tmp_path / "study.png")
    assert "Are the gaps between neighbours real?" in loaded.text and len(loaded.images) == 2
