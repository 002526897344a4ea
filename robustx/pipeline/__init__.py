"""The evaluation pipeline: run identity and the crash-safe results store
(:mod:`~robustx.pipeline.store`), and the JSON/HTML report with its plots
(:mod:`~robustx.pipeline.report`)."""
from robustx.pipeline.report import MetricResult, Report, compare, compare_html
from robustx.pipeline.store import ResultStore, run_id, run_unit

__all__ = ["run_id", "ResultStore", "run_unit", "MetricResult", "Report", "compare", "compare_html"]
