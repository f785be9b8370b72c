"""Minimal Django sites for bench/peers.py: one per system under comparison.

Each module reads the port of its peer's private redis-server from
``BENCH_REDIS_PORT``; bench/peers.py sets it and puts ``bench/`` on the path.
"""
