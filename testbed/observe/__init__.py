"""What a run records while it runs: queue and link telemetry on one clock, and packet captures."""
