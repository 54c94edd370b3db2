"""Collective schedules: what each rank of a collective executes, how it is built, run and checked.

* :mod:`.model` -- the schedule model: steps, schedules, collectives, reduction ops, algorithm, errors.
* :mod:`.builder` -- building each rank's schedule (NCCL's ring and chain algorithms, channels, chunks, deps).
* :mod:`.steps` -- executing one rank's steps over numpy buffers, for the rank process and the simulator.
* :mod:`.simulator` -- the in-process simulator of all ranks' schedules, used by the tests only.
* :mod:`.checking` -- reference results and nccl-tests' ``#wrong`` count within its float tolerance.
"""
