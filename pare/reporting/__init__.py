"""Results into reports: terminal table, Markdown, self-contained HTML, PNG plots."""

from pare.reporting.report import write_report
from pare.reporting.summary import print_summary

__all__ = ["write_report", "print_summary"]
