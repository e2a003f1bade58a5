"""Benchmarks run against real processes: ``python -m bench.flash_sale`` (``make bench``)."""
