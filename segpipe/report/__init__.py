"""The report of a data set: one static HTML page, ``<workspace>/<dataset>/report/index.html``, with the data
set's summary, the plans and their reasons, training curves, cross-validation metrics, the selection and
overlays of the best, median and worst case (``segpipe report``; ``segpipe run`` and the demo write it at
the end). See docs/report.md.
"""
from segpipe.report.run import ReportResult, write_report

__all__ = ["ReportResult", "write_report"]
