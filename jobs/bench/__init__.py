"""Sections of ``python -m jobs.benchmark``: engine, worker, driver, memory (one module each)."""
