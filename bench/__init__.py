"""Benchmarks of the edge stack (`python -m bench.edge_throughput`)."""
