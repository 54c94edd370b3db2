"""NCCL-like collectives: schedules per rank, rank processes that run them over queue pairs, the runner that
drives a sweep, nccl-tests' options and output, and the analytic bound of each call."""
