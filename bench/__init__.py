"""`make bench`: propagation, throughput and cold-start figures for the gateway.

Run with `.venv/bin/python -m bench.run` (see bench/run.py for settings). Nothing in
this package is imported by the gateway.
"""
