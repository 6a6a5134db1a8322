"""What a run's measurements look like to a reader: the HTML report (:mod:`~safe.reporting.report`), its plots
(:mod:`~safe.reporting.plots`), the per-benchmark tables (:mod:`~safe.reporting.benchmark_tables`) and the
generated markdown (:mod:`~safe.reporting.docs`). The measurements themselves come from :mod:`safe.evaluation`."""
