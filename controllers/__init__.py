"""Congestion-control and latency-management algorithms and the fabric controller loop (later issues)."""
