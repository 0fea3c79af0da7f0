"""The run report: ``python -m stream.report RUN_DIR`` writes ``RUN_DIR/report/``."""

from stream.report.build import ReportOptions, build_report
from stream.report.tables import RecoverySettings

__all__ = ["RecoverySettings", "ReportOptions", "build_report"]
