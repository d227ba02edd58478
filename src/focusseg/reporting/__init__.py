"""Run reports: the offline HTML run / cross-validation report, the comparison page, and training observers
that record what a report shows (TensorBoard scalars, cycle-training statistics)."""

from focusseg.reporting.compare import compare_html, write_compare
from focusseg.reporting.report import REPORT_NAME, report_after_training, write_report

__all__ = ["REPORT_NAME", "compare_html", "report_after_training", "write_compare", "write_report"]
