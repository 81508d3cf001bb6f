"""HTML report of a propagation run: ``python -m jobs.report prefix=URI`` (pages under ``{prefix}/report``;
``pipeline.dataset.report``)."""

from __future__ import annotations

from jobs.edge import EXIT_OK, Job
from pipeline.dataset.report import report_run
from pipeline.dataset.specs import ReportSpec


def report(spec: ReportSpec) -> int:
    """Write the report; videos whose sheet or masklets cannot be read are listed in it with the reason."""
    index, rows, where = report_run(spec)
    print(f"videos from {where}")
    print(f"report of {len(rows)} videos ({sum(r.failure is not None for r in rows)} failed): {index}")
    return EXIT_OK


JOB = Job("report", "report", ReportSpec, report)

if __name__ == "__main__":
    JOB.main()
