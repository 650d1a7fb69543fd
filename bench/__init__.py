"""Benchmarks of pg-realtime against the ceilings it is built on, measured side by side.

``python -m bench`` runs them all; ``python -m bench send latency`` runs the named ones;
``--quick`` makes a short smoke run. Every benchmark starts its own PostgreSQL and servers,
sends traffic only on 127.0.0.1, stops by itself, prints its tables and writes a plot under
``docs/bench/``. A full run also rewrites the results section of ``docs/benchmarks.md``.

Each figure is either a ratio against a baseline measured in the same run, or a latency
distribution: absolute numbers from a shared two-core machine are noise on their own.
"""
