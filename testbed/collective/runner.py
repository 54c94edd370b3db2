"""NCCL-like collectives on a running testbed: one rank process per host, measured like nccl-tests.

    with Testbed(TwoSites()) as tb:
        options = nccl_tests.parse_args("all_reduce", ["-b", "64K", "-e", "4M", "-f", "4"])
        results = perf(tb, options, print_line=print)      # prints nccl-tests' table as it goes

``perf`` starts a rank (``testbed.collective.rank``) on every GPU host (rank i = ``tb.hosts()[i]``), and
for each size, op, datatype and root of the sweep runs the out-of-place then the in-place variant:
warm-up iterations, timed iterations (the time is their mean, averaged over ranks, as nccl-tests does
across processes), and with ``-c`` one checked iteration whose result every rank compares element by
element with the expected one.  The rank processes start once per sweep and serve every measurement.
"""

import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

from controllers.dcqcn import Dcqcn
from testbed.collective import nccl_tests
from testbed.collective.bounds import collective_bound, rank_sites
from testbed.collective.schedules.model import Algorithm
from testbed.net.processes import python_module
from testbed.roce.queue_pair import line_rate_bps


class RankError(RuntimeError):
    """A rank process failed; the message carries its last words."""


class Ranks:
    """The rank processes of one job, started on their hosts and driven in lock step."""

    def __init__(self, hosts: list, job: dict) -> None:
        self.hosts = hosts
        self.procs = []
        try:
            for rank, host in enumerate(hosts):
                proc = host.popen(python_module("testbed.collective.rank"), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                self.procs.append(proc)
                proc.stdin.write(json.dumps(dict(job, rank=rank)) + "\n")
                proc.stdin.flush()
            self._answers()  # every rank is ready: its NIC and queue pairs are open
        except BaseException:
            self.close()
            raise

    def run(self, command: dict) -> list[dict]:
        """Send ``command`` to every rank at once and return their answers, in rank order."""
        for proc in self.procs:
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        return self._answers()

    def _answers(self) -> list[dict]:
        """One line from every rank, read all at once: an answer carrying telemetry rows can exceed a pipe's
        buffer, and a rank blocked writing it serves no ACKs, which a peer still finishing may need."""
        pool = ThreadPoolExecutor(len(self.procs))
        try:
            futures = {pool.submit(proc.stdout.readline): rank for rank, proc in enumerate(self.procs)}
            lines = {}
            for future in as_completed(futures):
                rank = futures[future]
                if not future.result():  # the first rank to fail ends the job (close() kills the others)
                    raise RankError(f"rank {rank} on {self.hosts[rank].name} failed: "
                                    f"{self._last_words(self.procs[rank])}")
                lines[rank] = future.result()
        finally:
            pool.shutdown(wait=False)
        return [json.loads(lines[rank]) for rank in range(len(self.procs))]

    @staticmethod
    def _last_words(proc) -> str:
        proc.kill()
        lines = proc.stderr.read().strip().splitlines()
        return lines[-1] if lines else f"exit code {proc.wait()}"

    def close(self) -> None:
        """End every rank: stdin closed ends a rank that is waiting; one that hangs is killed."""
        for proc in self.procs:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_ranks(tb, nchannels: int = 1, cc: dict | None = None, control: str | None = None,
                telemetry_s: float = 0.0) -> Ranks:
    """A rank on every GPU host of ``tb`` (rank i = host i), with ``nchannels`` queue pairs to every peer
    each way and ``cc`` as congestion control (DCQCN at the hosts' line rate unless it names another); with
    ``control`` (a ``ControlServer``'s path) each rank also connects to the fabric controller; with
    ``telemetry_s`` each samples its flows that often (wall time) and answers with the rows
    (``testbed.collective.flow_samples``).  ``cc`` is in declared units; the ranks run at ``tb.dilation``."""
    hosts = tb.hosts()
    cc = cc or Dcqcn.spec(line_rate_bps=line_rate_bps(hosts[0]))
    return Ranks(hosts, {"addresses": [host.IP() for host in hosts], "nchannels": nchannels, "cc": cc,
                         "control": control, "telemetry_ns": round(telemetry_s * 1e9), "dilation": tb.dilation})


def command(tb, collective: str, count: int, *, dtype: str = "float", op: str = "sum", root: int = 0,
            algorithm: Algorithm = Algorithm(), in_place: bool = False, warmup: int = 0, iters: int = 1,
            check: bool = True, seed: int = 0) -> dict:
    """One measurement for the ranks: ``count`` is the NCCL call's count, ``dtype`` nccl-tests' name."""
    numpy_dtype = nccl_tests.numpy_dtype(dtype)
    return {"collective": collective, "count": count, "dtype": numpy_dtype.name,
            "op": "sum" if op == nccl_tests.NO_OP else op, "root": max(root, 0),
            "nchannels": algorithm.nchannels, "chunk_elems": max(1, algorithm.chunk_bytes // numpy_dtype.itemsize),
            "sites": rank_sites(tb.topo, [h.name for h in tb.hosts()]) if algorithm.hierarchical else None,
            "in_place": in_place,
            "warmup": warmup, "iters": iters, "check": check, "seed": seed}


def perf(tb, options: nccl_tests.Options, algorithm: Algorithm = Algorithm(), cc: dict | None = None,
         print_line: Callable[[str], None] = print, telemetry_s: float = 0.0,
         on_answers: Callable[[dict, list[dict]], None] | None = None) -> list[nccl_tests.Result]:
    """Start a rank on every GPU host of ``tb`` and run the sweep ``options`` describes (see ``sweep``)."""
    with start_ranks(tb, algorithm.nchannels, cc, telemetry_s=telemetry_s) as ranks:
        return sweep(tb, ranks, options, algorithm, print_line, on_answers)


def sweep(tb, ranks: Ranks, options: nccl_tests.Options, algorithm: Algorithm = Algorithm(),
          print_line: Callable[[str], None] = print,
          on_answers: Callable[[dict, list[dict]], None] | None = None) -> list[nccl_tests.Result]:
    """Run every size, datatype, op and root of ``options`` on ``ranks``; print nccl-tests' output as it goes.
    ``on_answers(command, answers)`` sees every rank's answer (per-iteration times, flow counters)."""
    n = len(ranks.hosts)
    ranks_info = [nccl_tests.RankInfo(r, h.name, h.IP(), tb.topo.nodeInfo(h.name)["site"])
                  for r, h in enumerate(ranks.hosts)]
    for line in [*nccl_tests.header_lines(options, ranks_info), *nccl_tests.column_header_lines()]:
        print_line(line)
    results = []
    for dtype in options.dtypes:
        for op in options.ops:
            for root in options.roots(n):
                for size in options.sizes:
                    result = _measure_size(tb, ranks, options, algorithm, size, dtype, op, root, on_answers)
                    print_line(nccl_tests.format_row(result))
                    results.append(result)
    for line in nccl_tests.footer_lines(results, out_of_bounds=0):
        print_line(line)
    return results


def _measure_size(tb, ranks: Ranks, options: nccl_tests.Options, algorithm: Algorithm, size: int, dtype: str,
                  op: str, root: int, on_answers=None) -> nccl_tests.Result:
    n = len(ranks.hosts)
    counts = nccl_tests.coll_counts(options.collective, size, dtype, n)
    measured = []
    for in_place in (False, True):
        call = command(tb, options.collective, counts.param_count, dtype=dtype, op=op, root=root,
                       algorithm=algorithm, in_place=in_place, warmup=options.warmup_iters,
                       iters=options.iters, check=bool(options.check), seed=size)
        answers = ranks.run(call)
        if on_answers:
            on_answers(dict(call, size_bytes=counts.size_bytes), answers)
        time_us = sum(a["time_us"] for a in answers) / n
        reported = nccl_tests.wrong_is_reported(options.collective, in_place, options.check)
        wrong = sum(a["wrong"] or 0 for a in answers) if reported else None
        measured.append(nccl_tests.measure(options.collective, n, counts.size_bytes, time_us, wrong))
    return nccl_tests.Result(counts.size_bytes, counts.param_count, dtype, op, root, *measured)


def bounds_beside(tb, options: nccl_tests.Options, algorithm: Algorithm,
                  results: list[nccl_tests.Result]) -> list[dict]:
    """Each out-of-place measurement beside the analytic lower bound for the same call on this fabric."""
    hosts = [h.name for h in tb.hosts()]
    sites = rank_sites(tb.topo, hosts) if algorithm.hierarchical else None
    rows = []
    for result in results:
        bound = collective_bound(tb.graph, hosts, options.collective, result.size_bytes,
                                 chunk_bytes=algorithm.chunk_bytes, dtype=result.dtype, root=max(result.root, 0),
                                 nchannels=algorithm.nchannels, sites=sites)
        measured = result.out_of_place
        rows.append({"size_bytes": result.size_bytes, "dtype": result.dtype, "time_us": measured.time_us,
                     "bound_us": bound.time_us, "busbw_gbps": measured.busbw_gbps,
                     "bound_busbw_gbps": bound.busbw_gbps, "limited_by": bound.limited_by,
                     "bandwidth_term_us": bound.bandwidth_us, "latency_term_us": bound.latency_us,
                     "of_bound_pct": 100 * bound.time_us / measured.time_us if measured.time_us else 0.0})
    return rows
