"""Benchmarks: the lattice beside the NATS floor, Celery and taskiq, in one run (``python -m bench run``)."""
