"""Performance benchmarks of the project (not part of the installed product; they compare with the official ``sam2``).

``python -m benchmarks`` is the performance report (sections engine, worker, driver, memory; config
benchmarks/conf/benchmark.yaml); ``python -m benchmarks.engine`` is the engine comparison alone, as a table.
"""
