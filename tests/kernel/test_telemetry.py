"""Telemetry, captures and analysis on live fabrics: the sampler against the kernel's own counters,
a captured collective run against its senders and receivers, and the report's inputs."""

import json
import subprocess
import sys
from itertools import islice

import pandas as pd
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapReader

from testbed.experiments.probes import iperf_udp
from testbed.model.fabric import DEFAULT_MTU
from testbed.model.units import frame_bytes
from testbed.net.network import Testbed
from testbed.observe.telemetry import Telemetry
from testbed.roce.rocev2 import CE, ROCEV2_UDP_PORT, Flow, parse
from testbed.topologies import load_topology

pytestmark = pytest.mark.kernel

ECT0 = 0b10


def test_the_sampler_sees_the_dci_backlog_rise_and_its_marks_count_up():
    """UDP at 1.5x a 10 Mbit/s DCI (low rates: little CPU for iperf3 under emulation): the DCI egress queue
    fills to RED's range and marks; the sampled counters end where the kernel's own do, and the backlog the
    samples show is the one the queue holds.  The DCI router's shipped thresholds start marking at half
    its 577 KB buffer here: 2 s at 1.5x queue up to 1.25 MB, more than the buffer even if iperf3 falls
    short of its rate by a fifth."""
    with Testbed(load_topology("two_sites")(hosts=1, distance_km=100, host_bw_mbps=20, dci_bw_mbps=10)) as tb:
        egress = tb.egress("westb", "eastb")
        src, dst = tb.hosts("west")[0], tb.hosts("east")[0]
        with Telemetry(tb) as telemetry:
            iperf_udp(src, dst, mbps=15, seconds=2, length=8972, tos=ECT0)
        after = egress.stats()
        kmin = egress.shape.ecn_kmin_bytes
    queues = telemetry.frames()["queues"]
    dci = queues[(queues.node == "westb") & (queues.peer == "eastb")].sort_values("t_s")
    overhead = telemetry.overhead()
    print(f"{len(dci)} samples of westb->eastb, backlog max {dci.backlog_bytes.max()} B (kmin {kmin}), "
          f"marks {dci.ecn_marks.iloc[-1] - dci.ecn_marks.iloc[0]}; sampler {overhead}")
    assert dci.backlog_bytes.iloc[0] == 0 and dci.backlog_bytes.max() > kmin
    assert dci.ecn_marks.is_monotonic_increasing and dci.ecn_marks.iloc[-1] > dci.ecn_marks.iloc[0]
    # the sampler's own netlink decoder reads what pyroute2 reads
    for counter in ("ecn_marks", "sent_bytes", "sent_packets", "drops", "backlog_bytes"):
        assert dci[counter].iloc[-1] == after[counter], counter
    delay = dci.backlog_bytes * 8e3 / (egress.shape.bw_mbps * 1e6)
    assert (dci.queue_delay_ms - delay).abs().max() < 1e-9
    assert dci.dci.eq("west-east").all() and len(dci) >= 20  # a 2 s load at 10 ms
    links = telemetry.frames()["links"]
    west_dci = links[links.intf == egress.name]
    assert west_dci.tx_bytes.iloc[-1] - west_dci.tx_bytes.iloc[0] >= 0.9 * 2 * 10e6 / 8


def run_testbed(*args: str) -> str:
    """Run the CLI as users do, in its own process (the kernel tests run inside the VM already)."""
    done = subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True, text=True, timeout=1200)
    print(done.stdout, done.stderr, sep="\n")
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_receiver_counted_the_captured_marks(flow, receiver, packets: pd.DataFrame) -> None:
    """Marks are made before the tap (the sender's site and the DCI queue), never after it, and nothing is lost
    or reordered between the tap and the receiver: the first N data packets the tap saw, N being what the
    receiver had taken in by its final sample, carry exactly the receiver's CE marks.  The capture runs on
    after that sample: what it saw later can only be spurious retransmissions still in the DCI queue when the
    collective had completed (go-back-N resends a window; at 10 Mbit/s a 4 MB queue holds seconds)."""
    data = packets[(packets.kind == "data") & (packets.intf == flow.intf) & (packets.src == flow.src)
                   & (packets.dst == flow.dst) & (packets.dqpn == flow.dqpn)].sort_values("t_s", kind="stable")
    taken = int(receiver.packets + receiver.duplicates + receiver.out_of_order)
    assert len(data) >= taken, (flow, receiver)
    assert int((data.ecn.iloc[:taken] == CE).sum()) == receiver.ce_marked, (flow, receiver)
    assert set(data.sequence.iloc[taken:]) <= {"repeat"}, data.iloc[taken:].sequence.value_counts()


def assert_captured_the_cnps_sent(flow, receiver, packets: pd.DataFrame, dilation: float) -> None:
    """The CNPs the receiver had sent by its last sample cross the far border's queue and the fibre before the
    tap sees them: at least those captured by that sample's time, at most those captured one crossing later
    (the longest one-way delay of the data that shared their queue; measured up to 360 ms at p99 here).  A
    CNP may be tail-dropped by the full DCI queue on its way back: 1 % slack below."""
    back = packets[(packets.kind == "cnp") & (packets.src == flow.dst) & (packets.dst == flow.src)]
    beside = packets[(packets.kind == "data") & (packets.intf == flow.intf) & (packets.direction != flow.direction)]
    crossing_s = beside.owd_ms.max() * dilation / 1e3
    by_sample = int((back.t_s <= receiver.t_s).sum())
    one_crossing_later = int((back.t_s <= receiver.t_s + crossing_s).sum())
    assert by_sample <= receiver.cnps_sent <= one_crossing_later * 1.01 + 1, \
        (by_sample, receiver.cnps_sent, one_crossing_later, crossing_s)


MALFORMED = "_ws.malformed || _ws.expert.severity >= error"
# tshark's RPC-over-RDMA (NFS) heuristic, on by default, reassembles every RC SEND message to look for RPC in it
WITHOUT_RPC_HEURISTIC = ("--disable-heuristic", "rpcrdma_infiniband")


def tshark(pcap, *args: str) -> list[str]:
    """tshark's output lines (as root it warns on stderr, which is left out)."""
    return subprocess.run(["tshark", "-r", str(pcap), *args], capture_output=True, text=True, check=True,
                          timeout=300).stdout.splitlines()


def tshark_info(pcap, *options: str) -> list[str]:
    return tshark(pcap, *options, "-T", "fields", "-e", "_ws.col.Info")


def flagged_by_tshark(pcap, *options: str) -> list[str]:
    """The packets tshark flags: malformed or with an expert error, and those whose Info column alone says
    "[Malformed Packet]" (tshark 4.0's InfiniBand dissector reports a cut payload so, with no field to filter)."""
    return tshark(pcap, *options, "-Y", MALFORMED) + [info for info in tshark_info(pcap, *options)
                                                       if "Malformed" in info]


def assert_opens_clean_in_tshark(pcaps: list, data_packets: int, tmp_path) -> None:
    """A default capture decodes in tshark with no malformed or expert-error packet, each data packet as an
    RC SEND, but for what the RPC-over-RDMA heuristic makes of the messages it reassembles (in one run it
    threw on 2 of 48 and named 5 SEND LASTs "[Illegal RPCoRDMA fragments]"); the same file cut to headers
    (editcap -s 128) is flagged, so the check can see what it looks for.  The ICRCs tshark shows are the
    real ones: the transport's own parser, which checks the ICRC first, accepts the first packets'."""
    flagged = [flagged_by_tshark(pcap, *WITHOUT_RPC_HEURISTIC) for pcap in pcaps]
    assert pcaps and flagged == [[]] * len(pcaps), flagged
    outside_rpc = [tshark(pcap, "-Y", f"({MALFORMED}) && !rpcordma.reassembled.length") for pcap in pcaps]
    assert outside_rpc == [[]] * len(pcaps), outside_rpc
    sends = [info.startswith("RC Send") for pcap in pcaps for info in tshark_info(pcap, *WITHOUT_RPC_HEURISTIC)]
    assert sum(sends) == data_packets
    cut = tmp_path / "cut.pcap"
    subprocess.run(["editcap", "-s", "128", str(pcaps[0]), str(cut)], check=True, capture_output=True)
    cut_sends = sum(info.startswith("RC Send") for info in tshark_info(pcaps[0], *WITHOUT_RPC_HEURISTIC))
    assert len(flagged_by_tshark(cut, *WITHOUT_RPC_HEURISTIC)) >= cut_sends > 0
    first = (Ether(record) for record, _ in islice(RawPcapReader(str(pcaps[0])), 300))
    roce = [frame for frame in first if UDP in frame and frame[UDP].dport == ROCEV2_UDP_PORT]
    for frame in roce:
        parse(bytes(frame[UDP].payload), Flow(frame[IP].src, frame[IP].dst, frame[UDP].sport))
    assert roce


def test_a_captured_collective_is_reproduced_by_analyze_and_reported(tmp_path):
    """The product path: ``testbed perf --capture`` then ``testbed analyze``.  Each captured flow's bytes match
    its sender's within 1 %; the CE marks and CNPs the capture shows are the ones the receivers counted; the
    report's inputs are all written; the pcaps open clean in tshark."""
    out = tmp_path / "run"
    # a DCI buffer larger than all the data an iteration sends: RED marks ECT data instead of dropping it, so
    # nothing the senders count is lost before the tap (with the default buffer, tail drops cost 1.6 % once);
    # the DCQCN paper's switch settings at this rate (2 and 8 frames, Pmax 1 %), as the DCI router's shipped
    # 1 MiB Kmin lies beyond what this collective queues and marks nothing, and its 5 % Pmax marked 84 % of the
    # data here: a CNP flood whose count the capture and the receivers' last samples split differently.
    # k 2.2, what --dilation auto's packet budget asks for here: what is compared are counts, which no k
    # changes, and auto's lateness term would ask for k ~1,500 at this 10 km DCI (half an hour of wall time)
    frame = frame_bytes(DEFAULT_MTU)
    run_testbed("perf", "all_reduce", "--dilation", "2.2", "--topology", "two_sites", "--hosts", "2",
                "--host-bw-mbps", "20", "--dci-bw-mbps", "10", "--buffer-bytes", "4000000",
                "--ecn-kmin-bytes", str(2 * frame), "--ecn-kmax-bytes", str(8 * frame), "--ecn-pmax", "0.01",
                "-b", "1M", "-e", "1M", "-n", "1", "-w", "0",
                "--capture", "--out", str(out))
    meta = json.loads((out / "capture" / "capture.json").read_text())
    assert len(meta["interfaces"]) == 1 and set(meta["kernel_drops"].values()) == {0}, meta
    analysed = run_testbed("analyze", str(out))

    flows = pd.read_parquet(out / "telemetry" / "flows.parquet")
    totals = flows.groupby(["rank", "peer", "channel", "side"]).last().reset_index()
    captured = pd.read_csv(out / "analysis" / "flows.csv").dropna(subset=["dqpn"])
    packets = pd.read_parquet(out / "analysis" / "packets.parquet")
    assert len(captured) == 2  # the ring's two DCI crossings, one each way
    for flow in captured.itertuples():
        match = totals[(totals.src == flow.src) & (totals.dst == flow.dst) & (totals.dqpn == flow.dqpn)]
        sender, receiver = (match[match.side == side].iloc[0] for side in ("sender", "receiver"))
        assert flow.ip_bytes == pytest.approx(sender.ip_bytes_sent, rel=0.01), (flow, sender)
        assert_receiver_counted_the_captured_marks(flow, receiver, packets)
        assert_captured_the_cnps_sent(flow, receiver, packets, meta["dilation"])
    assert captured.ce_packets.sum() > 0 and captured.cnps.sum() > 0  # the 10 Mbit/s DCI did congest
    assert meta["snaplen"] == frame_bytes(DEFAULT_MTU)  # whole frames of the links
    assert_opens_clean_in_tshark(sorted((out / "capture").glob("*.pcap*")), int((packets.kind == "data").sum()),
                                 tmp_path)
    check = pd.read_csv(out / "analysis" / "crosscheck.csv")
    flow_rows = check[~check.scope.str.contains(" queue ") & check.quantity.isin(["ip_bytes", "ce_packets", "cnps"])]
    assert len(flow_rows) == 6 and flow_rows.ok.all(), flow_rows.to_string()

    # inside the VM the report's inputs are written and the drawing is left to the host (report.render)
    assert "report: drawn on the host once the microVM exits" in analysed
    params = json.loads((out / "params.json").read_text())
    assert params["tables"] == ["all_reduce-bound.csv"] and (out / "all_reduce-bound.csv").exists()
    assert "# Avg bus bandwidth" in (out / "nccl-tests.txt").read_text()
    assert list(pd.read_parquet(out / "results.parquet")["oop_wrong"]) == [0]
    for name in ("queues", "links", "flows", "steps"):
        assert len(pd.read_parquet(out / "telemetry" / f"{name}.parquet")) > 0, name
