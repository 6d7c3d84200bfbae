"""The optimizer study's report as one self-contained HTML page: report.md's text, figures embedded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catsdogs.report import format_report
from catsdogs.webpage import markdown_to_html, page


def format_report_html(study_dir: Path, summary: dict[str, Any]) -> str:
    """report.md's text, from the same summary, with the study's figures inside the page."""
    figures = {name: (study_dir / name).read_bytes() for name in summary["figures"].values()
               if (study_dir / name).is_file()}
    return page(f"Optimizer study: {', '.join(summary['optims'])}", markdown_to_html(format_report(summary), figures))
