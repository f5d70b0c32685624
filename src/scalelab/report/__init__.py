"""The study report: one self-contained directory a person opens from disk (built in build.py)."""

from scalelab.report.build import MARKER, Report, build_report, write_report

__all__ = ["MARKER", "Report", "build_report", "write_report"]
