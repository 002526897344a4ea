"""The evaluation pipeline: content keys and the crash-safe results store
(:mod:`~robustx.pipeline.store`), and the JSON/HTML report with its plots
(:mod:`~robustx.pipeline.report`)."""
from robustx.pipeline.report import MetricResult, Report, compare, compare_html
from robustx.pipeline.store import ResultStore, StoreError, run_unit

__all__ = ["ResultStore", "StoreError", "run_unit", "MetricResult", "Report", "compare", "compare_html"]
