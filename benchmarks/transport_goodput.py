#!/usr/bin/env python3
"""Benchmark (not a test): single-flow transport goodput per IB MTU and pacing accuracy per set rate, natively;
the packet budget per rank natively and inside the microVM.

    sudo .venv/bin/python benchmarks/transport_goodput.py [--mtus 256 512 1024 2048 4096]
                                                          [--rates-mbps 10 50 100 200 500 1000 2000] [--seconds 2]
                                                          [--budget-ranks 1 2 4] [--budget-seconds 3] [--no-vm]

Two fresh network namespaces joined by a veth pair (IP MTU 9000, no delay, no qdisc) carry one queue pair.
Its receiver runs in a forked child process and its sender in this one, each pinned to a core of its own,
as on two hosts.  Goodput: the sender is paced at 100 Gbit/s, far above what it reaches, so it sends as fast
as its CPU allows; each row reports the acknowledged payload rate, packets/s, retransmissions and the CPU
time each end spends per packet.  Pacing: the sender is paced at each set rate and the achieved IP rate is
measured from the send timestamps, as the unit test does.  Prints both tables and what limits goodput, and
writes the tables as CSV to the results directory.  The namespaces are removed whatever happens.

Budget: ``testbed.roce.budget`` (what ``--dilation auto`` calibrates with) with 1, 2 and 4 ranks, natively and
inside the microVM, booted for it (under TCG on this machine, ~1 min more; ``--no-vm`` skips it), so the
packets/s per rank the transport reaches under emulation is tracked from run to run.  Both are printed in
one table, with the VM's share of the native rate.  Absolute numbers move with the host's other load (a
second VM halves them): compare the rows of one run, or runs on an idle machine.
"""

import argparse
import json
import multiprocessing
import os
import resource
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from pyroute2 import IPRoute, NetlinkError, netns

from controllers.fixed_rate import FixedRate
from testbed.net import microvm
from testbed.results.console import console
from testbed.results.tables import frame_table
from testbed.roce.budget import measure as measure_budget
from testbed.roce.nic import Nic, entered
from testbed.roce.receiver import Receiver
from testbed.roce.rocev2 import IB_MTUS, data_capacity
from testbed.roce.sender import IP_UDP_HEADER_BYTES, Sender
from testbed.roce.transport import TransportConfig

SENDER_IP, RECEIVER_IP, PREFIX_LEN = "10.255.0.1", "10.255.0.2", 30
LINK_MTU = 9000  # above the largest RoCEv2 packet (IB MTU 4096 + 40 bytes of headers)
SQPN, RQPN = 2, 3
UNPACED_BPS = 100e9  # far above what one Python sender reaches: the pacer never holds a packet back
# At most QUEUE_DEPTH messages are unacknowledged: 1 MiB, below the ~1.7 MiB of IB MTU 256 packets (3.8 MiB at
# 4096) the receiver's socket buffer holds, so a receiver that falls behind for a moment does not overflow it.
MESSAGE_BYTES = 512 << 10
QUEUE_DEPTH = 2
FLUSH_TIMEOUT_S = 30.0
RECEIVER_POLL_S = 0.05  # how often an idle receiver checks whether the parent said stop
START_TIMEOUT_S = 10.0
PACING_MTU = 4096
PACING_TOLERANCE = 0.05  # the requirement: achieved rate within 5 % of the set rate
GOAL_BPS = 1e9  # the goal: at least 1 Gbit/s per flow natively
BUSY_MACHINE_WAIT_PCT = 10  # an end waiting this long for a core measured the machine's other load, not itself
BUDGET_MARKER = "transport_goodput budget:"  # the line the VM prints its measurements on, as JSON

GOODPUT_COLUMNS = {"mtu": "MTU", "recovery": "mode", "goodput_gbps": "Gbit/s", "kpackets_per_s": "kpps",
                   "retransmitted_pct": "retx%", "tx_us_per_packet": "tx us", "rx_us_per_packet": "rx us",
                   "tx_cpu_pct": "tx cpu", "rx_cpu_pct": "rx cpu", "tx_wait_pct": "tx wt", "rx_wait_pct": "rx wt"}
PACING_COLUMNS = {"set_mbps": "set Mbit/s", "achieved_mbps": "achieved", "error_pct": "error %",
                  "within": "within 5 %", "packets": "packets", "retransmitted": "retx", "tx_cpu_pct": "tx cpu",
                  "tx_wait_pct": "tx wt"}


class SetupError(Exception):
    """The namespaces or the veth pair could not be made (the message says why)."""


class Namespaces:
    """Two fresh network namespaces, named uniquely, joined by a veth pair: the sender's and the receiver's."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.names = (f"tgp-{tag}-tx", f"tgp-{tag}-rx")
        self.sender, self.receiver = (f"/run/netns/{name}" for name in self.names)

    def create(self) -> None:
        """Make both namespaces and the veth pair, created inside the sender's namespace so that nothing is
        ever left behind in the root namespace."""
        tx, rx = self.names
        for name in self.names:
            netns.create(name)
        with IPRoute(netns=tx) as ipr:
            ipr.link("add", ifname="veth-tx", kind="veth", peer={"ifname": "veth-rx", "net_ns_fd": rx})
        _bring_up(tx, "veth-tx", SENDER_IP)
        _bring_up(rx, "veth-rx", RECEIVER_IP)

    def remove(self) -> None:
        """Remove both namespaces (the veth pair goes with them); those never made are skipped."""
        for name in self.names:
            if name in netns.listnetns():
                netns.remove(name)


def _bring_up(name: str, ifname: str, address: str) -> None:
    """Address ``ifname`` in namespace ``name``, give it the jumbo MTU and bring it and loopback up."""
    with IPRoute(netns=name) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, mtu=LINK_MTU)
        ipr.addr("add", index=index, address=address, prefixlen=PREFIX_LEN)
        ipr.link("set", index=index, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


@contextmanager
def namespaces() -> Iterator[Namespaces]:
    """The namespace pair for the block, removed afterwards even on an error or Ctrl-C."""
    pair = Namespaces()
    try:
        try:
            pair.create()
        except (OSError, NetlinkError) as error:
            raise SetupError(f"cannot create the network namespaces and veth pair: {error}") from error
        yield pair
    finally:
        pair.remove()


def two_cpus() -> tuple[int, int] | None:
    """A core for the sender and another for the receiver, or None if this process may use only one."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


def pin(cpu: int | None) -> None:
    """Keep this process on ``cpu``: otherwise the scheduler may put both ends on one core (the sender
    wakes the receiver up), and each would measure half a core."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def cpu_seconds() -> dict[str, float]:
    """This process's CPU seconds in user space (Python) and in the kernel, and the seconds it was runnable
    but waited for a core (the scheduler's run delay: other load on the machine slowed it down)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/thread-self/schedstat") as schedstat:
        run_delay_ns = int(schedstat.read().split()[1])
    return {"user_s": usage.ru_utime, "sys_s": usage.ru_stime, "wait_s": run_delay_ns / 1e9}


def cpu_since(before: dict[str, float]) -> dict[str, float]:
    """What ``cpu_seconds`` grew by since ``before``."""
    return {name: value - before[name] for name, value in cpu_seconds().items()}


def udp_rcvbuf_errors(path: str) -> int:
    """Datagrams the namespace at ``path`` dropped because a socket's receive buffer was full."""
    with entered(path), open("/proc/thread-self/net/snmp") as snmp:
        header, values = [line.split() for line in snmp if line.startswith("Udp:")]
    return int(values[header.index("RcvbufErrors")])


def serve(conn, path: str, config: TransportConfig, cpu: int | None) -> None:
    """The child: a receiver taking (and dropping) messages until the parent says stop, then its numbers.

    Taking each message keeps memory flat however long the run.  SIGINT is ignored so that Ctrl-C reaches
    only the parent, which then stops the child itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pin(cpu)
    with Nic(RECEIVER_IP, netns=path) as nic, Receiver(nic, RQPN, SQPN, config) as receiver:
        conn.send(nic.address)
        before = cpu_seconds()
        while not conn.poll():
            try:
                receiver.recv(RECEIVER_POLL_S)
            except TimeoutError:
                pass
        conn.send(dict(receiver.counters, cpu=cpu_since(before)))


class ChildReceiver:
    """A ``Receiver`` in a forked child process on core ``cpu``: its own core and GIL, like a second host."""

    def __init__(self, path: str, config: TransportConfig, cpu: int | None) -> None:
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("fork").Process(target=serve, args=(child, path, config, cpu),
                                                                    daemon=True)
        self._process.start()
        try:
            self.address: tuple[str, int] = self._receive("start")
        except BaseException:
            self.close()
            raise

    def _receive(self, what: str):
        """The child's next report; a child that hangs must not hang the benchmark."""
        if not self._conn.poll(START_TIMEOUT_S):
            raise RuntimeError(f"the receiver did not {what} within {START_TIMEOUT_S} s")
        return self._conn.recv()

    def stop(self) -> dict:
        """Stop serving; the receiver's counters and CPU seconds."""
        self._conn.send("stop")
        return self._receive("stop")

    def close(self) -> None:
        """Make sure the child is gone: told to stop, killed if it does not."""
        if self._process.is_alive():
            try:
                self._conn.send("stop")
            except OSError:
                pass
            self._process.join(START_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
        self._process.join()

    def __enter__(self) -> "ChildReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pump(sender: Sender, seconds: float) -> None:
    """Keep ``QUEUE_DEPTH`` messages queued for ``seconds``, then wait until every one is acknowledged.

    Refilling as soon as one message is acknowledged keeps the sender busy (and its pacer running) the
    whole time, whatever rate it reaches, so every row lasts about ``seconds``.
    """
    message = bytes(MESSAGE_BYTES)
    counters = sender.counters

    def room() -> bool:
        return counters["messages_queued"] - counters["messages_acked"] < QUEUE_DEPTH

    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        while room():
            sender.send(message)
        sender.run_until(room, left)
    sender.flush(FLUSH_TIMEOUT_S)


def transfer(ns: Namespaces, cpus: tuple[int, int] | None, config: TransportConfig, rate_bps: float,
             seconds: float, on_send: Callable[[bytes], object] | None = None) -> dict:
    """Run one flow for ``seconds``: the sender's stats and CPU use, the receiver's report, drops.

    ``on_send(packet)`` is called as each packet is handed to the socket (for send timestamps).
    """
    drops_before = udp_rcvbuf_errors(ns.receiver)
    with ChildReceiver(ns.receiver, config, cpus and cpus[1]) as receiver, \
            Nic(SENDER_IP, netns=ns.sender) as nic:
        sender = Sender(nic, receiver.address, SQPN, RQPN, FixedRate(rate_bps), config)
        if on_send is not None:
            send = nic.sendto
            nic.sendto = lambda packet, tos, peer: (on_send(packet), send(packet, tos, peer))
        started, before = time.monotonic(), cpu_seconds()
        pump(sender, seconds)
        cpu = cpu_since(before)
        wall_s = time.monotonic() - started
        rx = receiver.stop()
    stats = sender.stats()
    if rx["bytes"] != stats["bytes_acked"]:
        raise RuntimeError(f"the receiver got {rx['bytes']} bytes but {stats['bytes_acked']} were acknowledged")
    return dict(stats=stats, rx=rx, tx_cpu=cpu, wall_s=wall_s,
                rcvbuf_drops=udp_rcvbuf_errors(ns.receiver) - drops_before)


def usage(end: str, cpu: dict[str, float], packets: int, wall_s: float) -> dict:
    """How hard one end (``tx`` or ``rx``) worked: CPU time per packet, its kernel part, and the share of the
    run it was on a core or waiting for one (together near 100 %: that end is the bottleneck)."""
    busy_s = cpu["user_s"] + cpu["sys_s"]
    return {f"{end}_us_per_packet": 1e6 * busy_s / packets,
            f"{end}_sys_us_per_packet": 1e6 * cpu["sys_s"] / packets,
            f"{end}_cpu_pct": 100 * busy_s / wall_s, f"{end}_wait_pct": 100 * cpu["wait_s"] / wall_s}


def measure_goodput(ns: Namespaces, cpus: tuple[int, int] | None, mtu: int, selective_repeat: bool,
                    seconds: float) -> dict:
    """One row of the goodput table: an unpaced flow at IB MTU ``mtu``."""
    run = transfer(ns, cpus, TransportConfig(mtu=mtu, selective_repeat=selective_repeat), UNPACED_BPS, seconds)
    stats, rx, wall_s = run["stats"], run["rx"], run["wall_s"]
    packets = stats["packets_sent"]
    received = rx["packets"] + rx["duplicates"] + rx["out_of_order"] + rx["buffered"]
    return {"mtu": mtu, "recovery": "SR" if selective_repeat else "GBN", "payload_bytes": data_capacity(mtu),
            "goodput_gbps": stats["goodput_bps"] / 1e9, "kpackets_per_s": packets / wall_s / 1e3,
            "retransmitted_pct": 100 * stats["retransmitted_packets"] / packets,
            **usage("tx", run["tx_cpu"], packets, wall_s), **usage("rx", rx["cpu"], received, wall_s),
            "packets_sent": packets, "retransmitted": stats["retransmitted_packets"], "timeouts": stats["timeouts"],
            "naks": stats["naks_received"], "acks": stats["acks_received"], "send_errors": stats["send_errors"],
            "rcvbuf_drops": run["rcvbuf_drops"], "rx_out_of_order": rx["out_of_order"],
            "rx_duplicates": rx["duplicates"], "bytes_acked": stats["bytes_acked"], "wall_s": wall_s}


def measure_pacing(ns: Namespaces, cpus: tuple[int, int] | None, rate_bps: float, seconds: float) -> dict:
    """One row of the pacing table: a flow paced at ``rate_bps``, its achieved rate from send timestamps."""
    sends: list[tuple[int, int, bytes]] = []  # time, UDP payload bytes, PSN
    run = transfer(ns, cpus, TransportConfig(mtu=PACING_MTU), rate_bps, seconds,
                   on_send=lambda packet: sends.append((time.monotonic_ns(), len(packet), packet[9:12])))
    achieved = paced_rate_bps(sends)
    error = achieved / rate_bps - 1
    return {"set_mbps": rate_bps / 1e6, "achieved_mbps": achieved / 1e6, "error_pct": 100 * error,
            "within_5_pct": abs(error) <= PACING_TOLERANCE, "packets": len(sends),
            "retransmitted": run["stats"]["retransmitted_packets"], "timeouts": run["stats"]["timeouts"],
            **usage("tx", run["tx_cpu"], len(sends), run["wall_s"]), "wall_s": run["wall_s"]}


def paced_rate_bps(sends: list[tuple[int, int, bytes]]) -> float:
    """IP bits/s from the first send to the last new packet's first send: later sends are loss recovery
    (after a timeout), not pacing.  IP bytes, because that is what the pacer counts."""
    seen, last = set(), 0
    for i, (_, _, psn) in enumerate(sends):
        if psn not in seen:
            seen.add(psn)
            last = i
    span_ns = sends[last][0] - sends[0][0]
    return sum(size + IP_UDP_HEADER_BYTES for _, size, _ in sends[:last]) * 8e9 / span_ns


def limits(goodput: pd.DataFrame) -> str:
    """What limits single-flow goodput, in this run's numbers (its largest-MTU go-back-N row): the end that is
    busy or waiting for a core the larger share of the run is the bottleneck, and its CPU time per packet
    caps the packets per second one core moves."""
    gbn = goodput[goodput["recovery"] == "GBN"].sort_values("mtu")
    row = gbn.iloc[-1]
    load = {end: row[f"{end}_cpu_pct"] + row[f"{end}_wait_pct"] for end in ("tx", "rx")}
    end, other = ("tx", "rx") if load["tx"] >= load["rx"] else ("rx", "tx")
    side = {"tx": "sender", "rx": "receiver"}
    us, sys_us, wait = row[f"{end}_us_per_packet"], row[f"{end}_sys_us_per_packet"], row[f"{end}_wait_pct"]
    per_packet = gbn[f"{end}_us_per_packet"]
    text = (f"Limit: the {side[end]}'s CPU (busy {row[f'{end}_cpu_pct']:.0f} % of the run at IB MTU {row.mtu}, "
            f"waiting for a core {wait:.0f} %; the {side[other]} busy {row[f'{other}_cpu_pct']:.0f} %).  It "
            f"spends {us:.1f} us per packet, {us - sys_us:.1f} in Python and {sys_us:.1f} in the kernel")
    if end == "tx":
        text += " (which includes the veth and the receiving socket)"
    if per_packet.max() <= 1.5 * per_packet.min():
        text += (f", nearly whatever the size ({per_packet.min():.1f}-{per_packet.max():.1f} us over IB MTU "
                 f"{gbn.mtu.iloc[0]}-{row.mtu}), so goodput grows with the MTU")
    text += (f".  One core thus moves ~{1e3 / us:.0f} k packets/s, {gbps(row.payload_bytes, us):.2f} Gbit/s "
             f"of {row.payload_bytes}-byte payloads (measured: {row.goodput_gbps:.2f}")
    if row.retransmitted:
        text += (f", {row.retransmitted_pct:.1f} % retransmitted after {row.rcvbuf_drops} receive-buffer drops "
                 f"and {row.timeouts} timeouts")
    if wait >= BUSY_MACHINE_WAIT_PCT:
        text += f"; other load kept it off a core {wait:.0f} % of the time: rerun on an idle machine"
    meeting = gbn[gbn["goodput_gbps"] * 1e9 >= GOAL_BPS]
    text += (f").  One flow meets the 1 Gbit/s goal from IB MTU {meeting.mtu.iloc[0]} up.  " if len(meeting) else
             ").  No MTU meets the 1 Gbit/s goal.  ")
    both_us = row.tx_us_per_packet + row.rx_us_per_packet
    return text + (f"Both ends in one process (as testbed.roce.queue_pair runs them) share one core: an estimated "
                   f"{1e3 / both_us:.0f} k packets/s, {gbps(row.payload_bytes, both_us):.2f} Gbit/s, for all "
                   f"its flows together.")


def gbps(payload_bytes: int, us_per_packet: float) -> float:
    """Goodput in Gbit/s of packets carrying ``payload_bytes`` each, one every ``us_per_packet``."""
    return payload_bytes * 8 / us_per_packet / 1e3


def goodput_table(frame: pd.DataFrame):
    """The goodput rows, rounded, with short column names that fit 80 columns."""
    shown = frame[list(GOODPUT_COLUMNS)].rename(columns=GOODPUT_COLUMNS)
    shown = shown.round({"Gbit/s": 3, "kpps": 1, "retx%": 2, "tx us": 1, "rx us": 1, "tx cpu": 0, "rx cpu": 0,
                         "tx wt": 0, "rx wt": 0})
    return frame_table("Single-flow goodput over a veth pair, unpaced (CPU-bound)", shown)


def pacing_table(frame: pd.DataFrame):
    """The pacing rows, rounded, with the 5 % verdict spelled out."""
    shown = frame.assign(within=frame["within_5_pct"].map({True: "[green]yes[/]", False: "[red]no[/]"}))
    shown = shown[list(PACING_COLUMNS)].rename(columns=PACING_COLUMNS)
    shown = shown.round({"achieved": 2, "error %": 2, "tx cpu": 0, "tx wt": 0})
    return frame_table(f"Pacing accuracy at IB MTU {PACING_MTU} (IP rate from send timestamps)", shown)


def budgets(ranks: list[int], seconds: float) -> dict[int, float]:
    """The packet budget (packets/s per rank) with each number of ranks, here."""
    return {n: measure_budget(n, seconds).packets_per_s for n in ranks}


def budgets_in_vm(ranks: list[int], seconds: float) -> dict[int, float] | None:
    """The packet budget with each number of ranks inside the microVM, booted for it (its output shown as it
    comes); None if it cannot boot or measure (the reason is printed)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--budget-only", "--budget-ranks", *map(str, ranks),
            "--budget-seconds", str(seconds)]
    try:
        console.print(f"budget: {microvm.describe('measuring the packet budget under emulation')}")
        vm = microvm.start(argv, rwdirs=[], cwd=Path(__file__).resolve().parents[1])
    except microvm.MicroVmError as error:
        console.print(f"budget: no microVM ({error})")
        return None
    found = None
    try:
        for line in iter(vm.stdout.readline, b""):
            text = line.decode(errors="replace").rstrip()
            if text.startswith(BUDGET_MARKER):
                found = {int(n): pps for n, pps in json.loads(text.removeprefix(BUDGET_MARKER)).items()}
            elif text:
                console.print(f"  vm: {text}", markup=False, highlight=False)
        status = vm.wait()
    finally:
        microvm.stop(vm)
    if found is None:
        console.print(f"budget: the microVM exited with status {status} without measuring")
    return found


def budget_table(native: dict[int, float], vm: dict[int, float] | None) -> pd.DataFrame:
    """One row per number of ranks: packets/s per rank natively, inside the microVM, and the VM's share."""
    rows = []
    for n, pps in native.items():
        row = {"ranks": n, "native_pps": pps}
        if vm is not None and n in vm:
            row.update(vm_pps=vm[n], vm_pct=100 * vm[n] / pps)
        rows.append(row)
    return pd.DataFrame(rows)


def budget_frame_table(frame: pd.DataFrame):
    """The budget rows, rounded, the microVM's accelerator in its column's name."""
    vm = f"microVM {microvm.accel().upper()}"
    native = vm + " (here)" if microvm.inside() else "native"
    shown = frame.rename(columns={"native_pps": native, "vm_pps": vm, "vm_pct": "VM/native %"})
    for column in (native, vm):
        if column in shown:
            shown[column] = shown[column].round().astype(int)
    if "VM/native %" in shown:
        shown["VM/native %"] = shown["VM/native %"].round(1)
    return frame_table("Packet budget, packets/s per rank", shown)


def run(args) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every row of both tables, in one pair of namespaces."""
    cpus = two_cpus()
    if cpus is None:
        console.print("only one CPU: sender and receiver share it, so each measures about half of it")
    pin(cpus and cpus[0])
    goodput, pacing = [], []
    with namespaces() as ns:
        for mtu, selective_repeat in [(mtu, False) for mtu in args.mtus] + [(max(args.mtus), True)]:
            goodput.append(measure_goodput(ns, cpus, mtu, selective_repeat, args.seconds))
            console.print(f"goodput, IB MTU {mtu} {goodput[-1]['recovery']}: "
                                 f"{goodput[-1]['goodput_gbps']:.3f} Gbit/s")
        for rate_mbps in args.rates_mbps:
            pacing.append(measure_pacing(ns, cpus, rate_mbps * 1e6, args.seconds))
            console.print(f"pacing at {rate_mbps:g} Mbit/s: {pacing[-1]['achieved_mbps']:.2f} Mbit/s")
    return pd.DataFrame(goodput), pd.DataFrame(pacing)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mtus", type=int, nargs="+", default=list(IB_MTUS), choices=IB_MTUS,
                        help="IB MTUs for the goodput rows (selective repeat is measured at the largest)")
    parser.add_argument("--rates-mbps", type=float, nargs="+", default=[10, 50, 100, 200, 500, 1000, 2000],
                        help="pacing rates to check")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each row")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks").resolve())
    parser.add_argument("--budget-ranks", type=int, nargs="+", default=[1, 2, 4],
                        help="numbers of ranks to measure the packet budget with")
    parser.add_argument("--budget-seconds", type=float, default=3.0, help="duration of each budget measurement")
    parser.add_argument("--no-vm", action="store_true", help="measure the budget natively only")
    parser.add_argument("--budget-only", action="store_true", help=argparse.SUPPRESS)  # what runs in the VM
    args = parser.parse_args()
    if args.budget_only:
        print(BUDGET_MARKER + json.dumps(budgets(args.budget_ranks, args.budget_seconds)), flush=True)
        return 0
    if os.geteuid() != 0:
        sys.exit("transport_goodput: must run as root (it creates network namespaces): use sudo")
    started, affinity = time.monotonic(), os.sched_getaffinity(0)
    try:
        goodput, pacing = run(args)
        os.sched_setaffinity(0, affinity)  # run pinned this process: the ranks and the VM need every core
        native = budgets(args.budget_ranks, args.budget_seconds)
        console.print("budget natively: " + ", ".join(f"{n} ranks {pps:.0f}" for n, pps in native.items()))
        vm = None if args.no_vm or microvm.inside() else budgets_in_vm(args.budget_ranks, args.budget_seconds)
        budget = budget_table(native, vm)
    except SetupError as error:
        sys.exit(f"transport_goodput: {error}")
    except KeyboardInterrupt:
        print("transport_goodput: interrupted (namespaces removed)", file=sys.stderr)
        return 130
    console.print(goodput_table(goodput))
    console.print("tx/rx us: CPU time (Python + kernel) per packet sent / received; cpu, wt: % of the run "
                         "on a core, and runnable but waiting for one (other load); kpps: k packets/s sent")
    console.print(pacing_table(pacing))
    console.print(limits(goodput))
    console.print(budget_frame_table(budget))
    console.print("budget: testbed.roce.budget, the ranks in a ring over loopback as fast as their CPU allows, "
                  "each sending and receiving; what --dilation auto calibrates with")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, frame in (("transport_goodput", goodput), ("transport_pacing", pacing), ("transport_budget", budget)):
        path = args.out / f"{name}-{stamp}.csv"
        frame.to_csv(path, index=False)
        console.print(f"written: {path}")
    console.print(f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
