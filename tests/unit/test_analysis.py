"""Capture analysis: small pcaps built here from testbed.roce.rocev2's own packets, with known sizes, marks, PSN
orders and clocks, must come back as the counts, delays and cross-check verdicts they were built with."""

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scapy.all import ARP, ICMP, IP, UDP, Dot1Q, Ether, Raw, raw
from scapy.contrib.roce import AETH, BTH, CNPPadding
from scapy.utils import PcapWriter

from testbed.results.analysis import analyze, save
from testbed.results.capture_flows import classify_psns
from testbed.results.crosscheck import cross_check, disagreements
from testbed.results.pcap import AnalysisError, decode, read_packets
from testbed.roce.rocev2 import CE, ECT0, ECT1, Flow, build_ack, build_cnp, build_data, build_nak

WEST, EAST = "10.1.0.2", "10.2.0.2"
WEST_MAC, EAST_MAC = "02:00:00:00:00:07", "02:00:00:00:00:08"  # westb-eth2's own MAC, the peer's
INTF = "westb-eth2"
CLOCK_OFFSET_NS = 1_732_500_000_000_000_000  # CLOCK_REALTIME - CLOCK_MONOTONIC
T0_NS = 123_456_789_000  # the telemetry's zero, monotonic
SNAPLEN = 128
PSN_MODULUS = 1 << 24


def interface(intf: str = INTF, mac: str = WEST_MAC) -> dict:
    return {"intf": intf, "node": "westb", "peer": "eastb", "dci": "west-east", "mac": mac}


def meta(queue_pairs: list[dict] = (), interfaces: list[dict] | None = None, t0_ns: int | None = T0_NS) -> dict:
    return {"snaplen": SNAPLEN, "clock_offset_ns": CLOCK_OFFSET_NS, "t0_monotonic_ns": t0_ns,
            "rotation": {"file_mb": 64, "files": 8}, "interfaces": interfaces or [interface()],
            "queue_pairs": list(queue_pairs), "kernel_drops": {INTF: 0}}


def frame(src: str, dst: str, udp_payload: bytes, ecn: int, src_mac: str, dst_mac: str) -> bytes:
    """An Ethernet frame as the kernel sends our packets: ID 0, DF, UDP 4791 both ways."""
    return raw(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst, tos=ecn, id=0, flags="DF")
               / UDP(sport=4791, dport=4791) / Raw(udp_payload))


def data(src: str, dst: str, dqpn: int, psn: int, send_ns: int, size: int = 1000, ecn: int = ECT0,
         msg_id: int = 1, src_mac: str = WEST_MAC, dst_mac: str = EAST_MAC) -> bytes:
    payload = build_data(Flow(src, dst, 4791), dqpn=dqpn, psn=psn, msg_id=msg_id, offset=0, msg_len=size,
                         payload=bytes(size), timestamp_ns=send_ns)
    return frame(src, dst, payload, ecn, src_mac, dst_mac)


def control(kind: str, src: str, dst: str, dqpn: int, src_mac: str = EAST_MAC, dst_mac: str = WEST_MAC) -> bytes:
    """An ACK, NAK, CNP or delay report from data receiver ``src`` to data sender ``dst``'s QP ``dqpn``."""
    flow = Flow(src, dst, 4791)
    payload = {"ack": lambda: build_ack(flow, dqpn=dqpn, psn=5, msn=1),
               "nak": lambda: build_nak(flow, dqpn=dqpn, psn=5, msn=1),
               "cnp": lambda: build_cnp(flow, dqpn=dqpn),
               "delay": lambda: build_cnp(flow, dqpn=dqpn, queue_delay_ns=123_456)}[kind]()
    return frame(src, dst, payload, ECT1 if kind in ("cnp", "delay") else ECT0, src_mac, dst_mac)


def ip_bytes(frame_bytes: bytes) -> int:
    return len(frame_bytes) - 14  # Ethernet header: the rest is the IP packet


def write_pcap(path: Path, packets: list[tuple[int, bytes]], nano: bool = True, snaplen: int = SNAPLEN) -> None:
    """``packets`` as (monotonic capture ns, frame), stamped in CLOCK_REALTIME and cut to ``snaplen``."""
    with PcapWriter(str(path), nano=nano, linktype=1, snaplen=snaplen) as writer:
        writer.write_header(None)
        for monotonic_ns, full in packets:
            realtime_ns = monotonic_ns + CLOCK_OFFSET_NS
            fraction = realtime_ns % 10**9
            writer.write_packet(full[:snaplen], sec=realtime_ns // 10**9,
                                usec=fraction if nano else fraction // 1000, wirelen=len(full))


def results(tmp_path: Path, packets: list[tuple[int, bytes]], capture_meta: dict | None = None, **pcap) -> Path:
    capture = tmp_path / "capture"
    capture.mkdir()
    (capture / "capture.json").write_text(json.dumps(capture_meta or meta()))
    write_pcap(capture / f"{INTF}.pcap0", packets, **pcap)
    return tmp_path


def only_row(frame_: pd.DataFrame, **match) -> pd.Series:
    rows = frame_
    for column, value in match.items():
        rows = rows[rows[column].isna()] if value is pd.NA else rows[rows[column] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_decode_agrees_with_scapy_full_and_truncated():
    send_ns = 987_654_321_012
    frames = [data(WEST, EAST, 9, 77, send_ns, size=3000, ecn=CE), control("ack", EAST, WEST, 4),
              control("nak", EAST, WEST, 4), control("cnp", EAST, WEST, 4), control("delay", EAST, WEST, 4)]
    for full in frames:
        dissected = Ether(full)
        src, dst, size, ecn, kind, dqpn, psn, ts, _, _ = decode(full)
        assert (src, dst, size, ecn) == (dissected[IP].src, dissected[IP].dst, dissected[IP].len,
                                         dissected[IP].tos & 3)
        assert (dqpn, psn) == (dissected[BTH].dqpn, dissected[BTH].psn)
        if AETH in dissected:
            assert kind == {0x1F: "ack", 0x60: "nak"}[dissected[AETH].syndrome]
        if CNPPadding in dissected:  # a CNP whose reserved bytes carry a queueing delay is a delay report
            assert kind == ("delay" if dissected[CNPPadding].reserved1 else "cnp")
        assert decode(full[:SNAPLEN]) == decode(full)  # 128 bytes hold every header we read
    # scapy's BTH takes the last 4 bytes it gets for the ICRC: ours reads our header by offset instead
    truncated = Ether(frames[0][:SNAPLEN])
    assert struct.unpack("!Q", truncated[BTH].original[12:20])[0] == send_ns == decode(frames[0][:SNAPLEN])[7]
    assert decode(frames[0])[4:8] == ("data", 9, 77, send_ns)
    cut_in_timestamp = decode(frames[0][:14 + 20 + 8 + 12 + 4])
    assert cut_in_timestamp[2] == ip_bytes(frames[0]) and cut_in_timestamp[7] is None


def test_decode_skips_vlan_tags():
    plain = data(WEST, EAST, 9, 3, T0_NS)
    tagged = plain[:12] + b"\x81\x00" + struct.pack("!H", 7) + plain[12:]
    assert Ether(tagged)[Dot1Q].vlan == 7 and Ether(tagged)[IP].src == WEST  # what scapy makes of it
    assert decode(tagged) == decode(plain) and decode(plain)[4] == "data"


def test_flow_counts_bytes_ce_and_one_way_delay_from_truncated_packets(tmp_path):
    sizes = [1000, 4076, 12, 2500, 700]
    marks = [ECT0, CE, ECT0, CE, CE]
    delays_ns = [1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_500_000]
    packets = []
    for i, (size, ecn, delay) in enumerate(zip(sizes, marks, delays_ns)):
        send_ns = T0_NS + i * 10_000_000
        packets.append((send_ns + delay, data(WEST, EAST, 9, i, send_ns, size=size, ecn=ecn)))
    analysis = analyze(results(tmp_path, packets, meta([{"src": WEST, "dst": EAST, "sqpn": 4, "dqpn": 9}])))

    assert analysis.packets["ip_bytes"].tolist() == [ip_bytes(f) for _, f in packets]  # not the 128 captured
    flow = only_row(analysis.flows, src=WEST, dst=EAST, dqpn=9)
    assert flow["data_packets"] == len(sizes)
    assert flow["ip_bytes"] == sum(ip_bytes(f) for _, f in packets)
    assert flow["ce_packets"] == marks.count(CE)
    assert flow["ce_fraction"] == pytest.approx(marks.count(CE) / len(marks))
    assert flow["sqpn"] == 4 and flow["direction"] == "out" and flow["egress"] == "westb->eastb"
    assert analysis.packets["owd_ms"].tolist() == pytest.approx([d / 1e6 for d in delays_ns])
    assert flow["owd_p50_ms"] == pytest.approx(pd.Series(delays_ns).median() / 1e6)
    times = [(t - T0_NS) / 1e9 for t, _ in packets]
    assert analysis.packets["t_s"].tolist() == pytest.approx(times)
    assert flow["mbps"] == pytest.approx(flow["ip_bytes"] * 8 / 1e6 / (times[-1] - times[0]))


def test_send_timestamp_cut_by_snaplen_is_na(tmp_path):
    full = data(WEST, EAST, 9, 0, T0_NS)
    analysis = analyze(results(tmp_path, [(T0_NS + 10**6, full)], snaplen=14 + 20 + 8 + 12 + 4))
    packet = analysis.packets.iloc[0]
    assert packet["ip_bytes"] == ip_bytes(full)
    assert pd.isna(packet["send_ts_ns"]) and pd.isna(packet["owd_ms"])


def test_microsecond_pcap_and_null_t0(tmp_path):
    send_ns = 50_000_000_000
    packets = [(send_ns + 2_345_000, data(WEST, EAST, 9, 0, send_ns)),
               (send_ns + 7_000_000, data(WEST, EAST, 9, 1, send_ns))]
    analysis = analyze(results(tmp_path, packets, meta(t0_ns=None), nano=False))
    assert analysis.packets["owd_ms"].tolist() == pytest.approx([2.345, 7.0])
    assert analysis.packets["t_s"].tolist() == pytest.approx([0.0, (7_000_000 - 2_345_000) / 1e9])


def test_control_packets_attributed_by_queue_pair_then_host_pair(tmp_path):
    other_west, other_east, third_west, third_east = "10.1.0.3", "10.2.0.3", "10.1.0.4", "10.2.0.4"
    queue_pairs = [{"src": WEST, "dst": EAST, "sqpn": 4, "dqpn": 9}]
    t = T0_NS
    built = [data(WEST, EAST, 9, 0, t), data(WEST, EAST, 8, 0, t),  # two flows on the host pair: only
             control("ack", EAST, WEST, 4), control("ack", EAST, WEST, 4), control("nak", EAST, WEST, 4),
             control("cnp", EAST, WEST, 4), control("cnp", EAST, WEST, 4), control("cnp", EAST, WEST, 4),
             control("delay", EAST, WEST, 4),  # a delay report answers no mark: no CNP of the flow's
             data(other_west, other_east, 11, 0, t), control("cnp", other_east, other_west, 7),  # one flow
             data(third_west, third_east, 20, 0, t), data(third_west, third_east, 21, 0, t),
             control("cnp", third_east, third_west, 99)]  # neither: kept apart with dqpn NA
    analysis = analyze(results(tmp_path, [(t + i, f) for i, f in enumerate(built)], meta(queue_pairs)))
    flows = analysis.flows

    named = only_row(flows, src=WEST, dst=EAST, dqpn=9)
    assert (named["acks"], named["naks"], named["cnps"], named["direction"]) == (2, 1, 3, "out")
    assert only_row(flows, src=WEST, dst=EAST, dqpn=8)[["acks", "naks", "cnps"]].tolist() == [0, 0, 0]
    assert only_row(flows, src=other_west, dst=other_east, dqpn=11)["cnps"] == 1
    lost = only_row(flows, src=third_west, dst=third_east, dqpn=pd.NA)
    assert (lost["cnps"], lost["data_packets"], lost["direction"]) == (1, 0, "out")
    assert pd.isna(lost["sqpn"])
    assert flows["cnps"].sum() == sum(1 for f in built if decode(f)[4] == "cnp")
    kinds = analysis.packets.set_index("kind")["direction"]
    assert set(kinds["cnp"]) == {"in"} and set(kinds["data"]) == {"out"}


@pytest.mark.parametrize("start", [100, PSN_MODULUS - 3])
def test_repeats_gaps_and_fills_across_the_psn_wrap(tmp_path, start):
    order = [0, 1, 2, 4, 5, 3, 5, 6, 9, 7, 2, 8, 10]  # packet indices in arrival order
    packets = [(T0_NS + i * 1000, data(WEST, EAST, 9, (start + n) % PSN_MODULUS, T0_NS))
               for i, n in enumerate(order)]
    seen, front, repeats, fills, gaps = set(), -1, 0, 0, 0
    for n in order:  # the same rules on unwrapped indices
        if n in seen:
            repeats += 1
        elif n < front:
            fills += 1
        else:
            gaps += max(0, n - front - 1) if front >= 0 else 0
            front = n
        seen.add(n)
    analysis = analyze(results(tmp_path, packets))
    flow = only_row(analysis.flows, dqpn=9)
    assert (flow["repeats"], flow["gaps"], flow["fills"]) == (repeats, gaps, fills)
    assert flow["retransmitted"] == repeats + fills
    assert flow["restarts"] == 0
    assert analysis.events["retransmitted"].sum() == repeats + fills


def test_a_new_incarnation_of_the_queue_pair_is_not_a_repeat():
    psns = [0, 1, 2, 3, 0, 1, 1]
    msg_ids = [0, 0, 1, 2, 0, 0, 0]
    offsets = [0, 4076, 0, 0, 0, 4076, 4076]
    labels, skipped = classify_psns(psns, msg_ids, offsets)
    assert labels == ["first", "next", "next", "next", "first", "next", "repeat"]
    assert skipped == [0] * len(psns)
    # a retransmission of the first packet while the front is still in message 0 stays a repeat
    assert classify_psns([0, 1, 0], [0, 0, 0], [0, 4076, 0])[0] == ["first", "next", "repeat"]


def test_rotated_files_are_read_oldest_first_whatever_their_names(tmp_path):
    capture = tmp_path / "capture"
    capture.mkdir()
    (capture / "capture.json").write_text(json.dumps(meta()))
    early = [(T0_NS + i * 1000, data(WEST, EAST, 9, i, T0_NS)) for i in range(3)]
    late = [(T0_NS + 10**6 + i * 1000, data(WEST, EAST, 9, 3 + i, T0_NS)) for i in range(3)]
    write_pcap(capture / f"{INTF}.pcap0", late)  # the ring wrapped: file 0 now holds the newest packets
    write_pcap(capture / f"{INTF}.pcap1", early)
    analysis = analyze(tmp_path)
    assert analysis.packets["psn"].tolist() == list(range(6))
    assert only_row(analysis.flows, dqpn=9)[["repeats", "gaps", "fills"]].tolist() == [0, 0, 0]


def test_plain_pcap_name_is_accepted(tmp_path):
    capture = tmp_path / "capture"
    capture.mkdir()
    (capture / "capture.json").write_text(json.dumps(meta()))
    write_pcap(capture / f"{INTF}.pcap", [(T0_NS, data(WEST, EAST, 9, 0, T0_NS))])
    assert len(read_packets(capture, meta())[0]) == 1


def test_both_directions_on_one_interface_by_mac(tmp_path):
    packets = [(T0_NS, data(WEST, EAST, 9, 0, T0_NS)),
               (T0_NS + 1, data(EAST, WEST, 5, 0, T0_NS, src_mac=EAST_MAC, dst_mac=WEST_MAC))]
    flows = analyze(results(tmp_path, packets)).flows
    assert only_row(flows, src=WEST)[["direction", "egress"]].tolist() == ["out", "westb->eastb"]
    assert only_row(flows, src=EAST)[["direction", "egress"]].tolist() == ["in", "eastb->westb"]


def test_non_roce_packets_are_ignored(tmp_path):
    noise = [raw(Ether(src=WEST_MAC) / ARP(pdst=EAST)),
             raw(Ether(src=WEST_MAC) / IP(src=WEST, dst=EAST) / ICMP()),
             raw(Ether(src=WEST_MAC) / IP(src=WEST, dst=EAST) / UDP(sport=4791, dport=53) / Raw(bytes(40)))]
    roce = data(WEST, EAST, 9, 0, T0_NS)
    analysis = analyze(results(tmp_path, [(T0_NS + i, f) for i, f in enumerate([*noise, roce])]))
    assert analysis.packets["kind"].tolist() == ["data"]
    assert analysis.flows["ip_bytes"].tolist() == [ip_bytes(roce)]
    assert (analysis.reading.records, analysis.reading.roce, analysis.reading.other) == (4, 1, 3)
    assert analysis.reading.line() == "read 4 records: 1 RoCE, 3 other (ignored)"


def test_no_roce_packets_gives_empty_frames(tmp_path):
    analysis = analyze(results(tmp_path, [(T0_NS, raw(Ether(src=WEST_MAC) / ARP(pdst=EAST)))]))
    assert analysis.packets.empty and analysis.flows.empty and analysis.throughput.empty and analysis.events.empty
    assert cross_check(analysis, None, None).empty


@pytest.mark.parametrize("cut", [10, 120, 16 + 128 - 3])  # into the last record's data; into its header
def test_a_capture_cut_mid_write_is_counted_not_half_read_silently(tmp_path, cut):
    packets = [(T0_NS + i, data(WEST, EAST, 9, i, T0_NS)) for i in range(3)]
    pcap = results(tmp_path, packets) / "capture" / f"{INTF}.pcap0"
    pcap.write_bytes(pcap.read_bytes()[:-cut])
    reading = analyze(tmp_path).reading
    assert reading.truncated == 1 and reading.cut_files == [pcap.name] and reading.roce == 2
    assert f"1 cut off at the end of {pcap.name}" in reading.line()


def test_bins_that_would_not_fit_are_refused_before_they_are_made(tmp_path):
    results(tmp_path, [(T0_NS, data(WEST, EAST, 9, 0, T0_NS)), (T0_NS + 10**9, data(WEST, EAST, 9, 1, T0_NS))])
    with pytest.raises(AnalysisError, match="makes 1,000,000,000 bins over the capture's 1 s: at most 1,000,000"):
        analyze(tmp_path, bin_s=1e-9)
    assert len(analyze(tmp_path, bin_s=1e-6).throughput) == 1_000_001  # the most it allows, zero bins included


def run_analyze(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "testbed", "analyze", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_analyze_refuses_a_cut_capture_unless_allowed_and_never_says_agrees_with_nothing_compared(tmp_path):
    cut, empty = tmp_path / "cut", tmp_path / "empty"
    cut.mkdir()
    empty.mkdir()
    pcap = results(cut, [(T0_NS + i, data(WEST, EAST, 9, i, T0_NS)) for i in range(3)]) / "capture" / f"{INTF}.pcap0"
    pcap.write_bytes(pcap.read_bytes()[:-10])
    refused = run_analyze(cut)
    assert refused.returncode == 2 and "cut off mid-write" in refused.stderr.strip().splitlines()[-1]
    assert not (cut / "analysis").exists()
    allowed = run_analyze(cut, "--allow-truncated")
    assert allowed.returncode == 0, allowed.stderr
    assert "read 3 records: 2 RoCE, 0 other (ignored); 1 cut off" in allowed.stdout
    assert "nothing to compare with the run's telemetry: the run left no telemetry" in allowed.stdout
    results(empty, [(T0_NS, raw(Ether(src=WEST_MAC) / ARP(pdst=EAST)))])
    quiet = run_analyze(empty)
    assert "nothing to compare with the run's telemetry: the capture holds no RoCE packets" in quiet.stdout
    assert "agrees" not in quiet.stdout
    not_a_dir = run_analyze(pcap)
    assert not_a_dir.returncode == 2 and "is a file, not a directory" in not_a_dir.stderr


def test_save_never_writes_through_a_symlink(tmp_path):
    analysis = analyze(results(tmp_path, [(T0_NS, data(WEST, EAST, 9, 0, T0_NS))]))
    check = cross_check(analysis, None, None)
    victim = tmp_path / "victim.csv"
    victim.write_text("precious")
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "flows.csv").symlink_to(victim)
    save(analysis, check, out)
    assert victim.read_text() == "precious" and not (out / "flows.csv").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["crosscheck.csv", "events.parquet", "flows.csv",
                                                     "packets.parquet", "throughput.parquet"]  # no temporaries
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(AnalysisError, match=f"symlink {linked}"):
        save(analysis, check, linked)
    assert not (tmp_path / "elsewhere").exists()


def test_throughput_bins_sum_to_the_flow_bytes_with_empty_bins_as_zero(tmp_path):
    bin_s = 0.1
    offsets_s = [0.01, 0.05, 0.12, 0.45, 0.46]  # nothing in bins 2 and 3
    packets = [(T0_NS + int(s * 1e9), data(WEST, EAST, 9, i, T0_NS, size=500 + 100 * i, ecn=CE if i == 2 else ECT0))
               for i, s in enumerate(offsets_s)]
    analysis = analyze(results(tmp_path, packets), bin_s=bin_s)
    bins = analysis.throughput
    assert bins["t_s"].tolist() == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert (bins["mbps"] * bin_s * 1e6 / 8).sum() == pytest.approx(sum(ip_bytes(f) for _, f in packets))
    assert bins["data_packets"].tolist() == [2, 1, 0, 0, 2]
    assert bins["ce_fraction"].iloc[1] == 1.0 and pd.isna(bins["ce_fraction"].iloc[2])
    assert analysis.events["data_packets"].tolist() == [2, 1, 0, 0, 2]


def telemetry_flows(sender: dict, receiver: dict) -> pd.DataFrame:
    """Two modes' samples of one queue pair; each mode's last row carries half of the totals."""
    rows = []
    for mode, share in (("baseline", lambda v: v // 2), ("adaptive", lambda v: v - v // 2)):
        for t_s, fraction in ((0.5, 0), (1.0, 1)):  # a zero sample, then the final one
            common = {"t_s": t_s, "mode": mode, "rank": 0, "peer": 1, "channel": 0, "src": WEST, "dst": EAST,
                      "sqpn": 4, "dqpn": 9}
            rows.append(common | {"side": "sender"} | {k: share(v) * fraction for k, v in sender.items()})
            rows.append(common | {"rank": 1, "peer": 0, "side": "receiver"}
                        | {k: share(v) * fraction for k, v in receiver.items()})
    return pd.DataFrame(rows)


def test_cross_check_agrees_and_reports_a_disagreement(tmp_path):
    order = [0, 1, 3, 2, 3, 4]  # one fill, one repeat
    marks = [ECT0, CE, CE, ECT0, ECT0, CE]
    packets = [(T0_NS + i * 10**6, data(WEST, EAST, 9, n, T0_NS, ecn=ecn))
               for i, (n, ecn) in enumerate(zip(order, marks))]
    packets += [(T0_NS + 10**7 + i, control(kind, EAST, WEST, 4)) for i, kind in enumerate(["cnp", "nak", "ack"])]
    analysis = analyze(results(tmp_path, packets, meta([{"src": WEST, "dst": EAST, "sqpn": 4, "dqpn": 9}])))
    data_frames = [f for _, f in packets if decode(f)[4] == "data"]
    sent = {"packets_sent": len(data_frames), "ip_bytes_sent": sum(map(ip_bytes, data_frames)),
            "retransmitted_packets": 2}
    received = {"ce_marked": marks.count(CE), "cnps_sent": 1 + 2, "naks_sent": 1}  # telemetry: 2 more CNPs
    # the sample before the capture began does not count: the increase within it is the 3 marks seen
    queues = pd.DataFrame({"t_s": [-0.5, 0.0005, 0.009], "mode": "", "node": "westb", "peer": "eastb",
                           "intf": INTF, "dci": "west-east", "ecn_marks": [40, 100, 100 + marks.count(CE)],
                           "drops": [0, 5, 5]})

    check = cross_check(analysis, telemetry_flows(sent, received), queues)
    assert set(check["quantity"]) == {"data_packets", "ip_bytes", "retransmitted", "ce_packets", "cnps", "naks"}
    bad = check[~check["ok"]]
    assert bad[["quantity", "capture", "run", "difference"]].values.tolist() == [["cnps", 1.0, 3.0, -2.0]]
    lines = disagreements(check)
    assert len(lines) == 1 and "cnps" in lines[0] and f"{WEST}->{EAST} qp 9" in lines[0]
    queue = only_row(check, scope=f"{INTF} out queue westb->eastb")
    assert queue["ok"] and queue["run"] == marks.count(CE) and queue["capture"] == marks.count(CE)


def test_cross_check_compares_the_receiver_until_its_last_sample(tmp_path):
    """Spurious retransmissions still queued when the collective completed reach the tap (and the receiver,
    which marks and answers them) after the receiver's final sample: the sender counted them, the receiver's
    telemetry did not."""
    early = [(T0_NS + i * 10**6, data(WEST, EAST, 9, i, T0_NS, ecn=CE)) for i in range(3)]
    late = [(T0_NS + 2 * 10**9 + i * 10**6, data(WEST, EAST, 9, i, T0_NS, ecn=CE)) for i in range(2)]  # repeats
    cnps = [(T0_NS + 2 * 10**9 + 5 * 10**6, control("cnp", EAST, WEST, 4))]
    analysis = analyze(results(tmp_path, early + late + cnps, meta([{"src": WEST, "dst": EAST, "sqpn": 4,
                                                                      "dqpn": 9}])))
    frames = [f for _, f in early + late]
    sent = {"packets_sent": 5, "ip_bytes_sent": sum(map(ip_bytes, frames)), "retransmitted_packets": 2}
    received = {"ce_marked": 3, "cnps_sent": 0, "naks_sent": 0}  # the final samples at 1.0 s
    check = cross_check(analysis, telemetry_flows(sent, received), None)
    assert check["ok"].all(), check.to_string()
    ce = only_row(check, quantity="ce_packets")
    assert ce["capture"] == 3 and "2 more captured after the receiver's last sample" in ce["note"]
    assert only_row(check, quantity="cnps")["capture"] == 0 and only_row(check, quantity="data_packets")["run"] == 5
    assert not cross_check(analysis, telemetry_flows(sent, dict(received, ce_marked=5)), None)["ok"].all()
    # a CNP sent before the sample but held in the reverse DCI queue reaches the tap after it: within the bounds;
    # two sent, where the tap saw one in all and the way back dropped nothing, are not
    assert cross_check(analysis, telemetry_flows(sent, dict(received, cnps_sent=1)), None)["ok"].all()
    assert not cross_check(analysis, telemetry_flows(sent, dict(received, cnps_sent=2)), None)["ok"].all()


def test_cross_check_compares_marks_on_what_the_receiver_had_taken_in(tmp_path):
    """A CPU-starved receiver samples while marked duplicates still wait in its socket: captured before its
    sample's time, not yet taken in.  Its CE marks are on the first packets it took in, as many as it counted."""
    packets = [(T0_NS + i * 10**6, data(WEST, EAST, 9, i % 3, T0_NS, ecn=CE)) for i in range(5)]  # 2 repeats
    analysis = analyze(results(tmp_path, packets, meta([{"src": WEST, "dst": EAST, "sqpn": 4, "dqpn": 9}])))
    sent = {"packets_sent": 5, "ip_bytes_sent": sum(ip_bytes(f) for _, f in packets), "retransmitted_packets": 2}
    received = {"ce_marked": 4, "cnps_sent": 0, "naks_sent": 0, "packets": 3, "duplicates": 1, "out_of_order": 0}
    check = cross_check(analysis, telemetry_flows(sent, received), None)  # its final samples at 1.0 s
    ce = only_row(check, quantity="ce_packets")
    assert ce["ok"] and ce["capture"] == 4 and "1 more captured after" in ce["note"], check.to_string()
    without = {k: v for k, v in received.items() if k not in ("packets", "duplicates", "out_of_order")}
    assert only_row(cross_check(analysis, telemetry_flows(sent, without), None), quantity="ce_packets")["capture"] == 5


def test_cross_check_without_telemetry_for_a_flow_and_without_any(tmp_path):
    analysis = analyze(results(tmp_path, [(T0_NS, data(WEST, EAST, 9, 0, T0_NS))]))
    others = telemetry_flows({"packets_sent": 1, "ip_bytes_sent": 1, "retransmitted_packets": 0},
                             {"ce_marked": 0, "cnps_sent": 0, "naks_sent": 0}).assign(dqpn=10)
    check = cross_check(analysis, others, None)
    assert check["run"].isna().all() and not check["ok"].any() and len(disagreements(check)) == len(check)
    empty = cross_check(analysis, None, None)
    assert empty.empty and list(empty.columns) == ["scope", "quantity", "capture", "run", "difference", "ok", "note"]


def test_save_writes_every_frame(tmp_path):
    analysis = analyze(results(tmp_path, [(T0_NS, data(WEST, EAST, 9, 0, T0_NS)),
                                          (T0_NS + 1, control("cnp", EAST, WEST, 77))]))
    check = cross_check(analysis, None, None)
    written = save(analysis, check, tmp_path / "analysis")
    assert sorted(p.name for p in written) == ["crosscheck.csv", "events.parquet", "flows.csv", "packets.parquet",
                                               "throughput.parquet"]
    packets = pd.read_parquet(tmp_path / "analysis" / "packets.parquet")
    assert packets["send_ts_ns"].tolist()[0] == T0_NS and pd.isna(packets["send_ts_ns"].tolist()[1])


def test_missing_or_unreadable_capture_is_a_clear_error(tmp_path):
    with pytest.raises(AnalysisError, match=str(tmp_path / "capture")):
        analyze(tmp_path)
    (tmp_path / "capture").mkdir()
    with pytest.raises(AnalysisError, match="capture.json"):
        analyze(tmp_path)
    (tmp_path / "capture" / "capture.json").write_text(json.dumps(meta()))
    with pytest.raises(AnalysisError, match=f"no pcap for interface {INTF}"):
        analyze(tmp_path)
    (tmp_path / "capture" / f"{INTF}.pcap0").write_bytes(b"not a pcap at all")
    with pytest.raises(AnalysisError, match=f"{INTF}.pcap0"):
        analyze(tmp_path)


@pytest.mark.parametrize("broken, problem", [
    ([interface()], "a JSON object expected, got list"),
    ({"clock_offset_ns": None}, "lacks clock_offset_ns"),
    ({"clock_offset_ns": "soon"}, "clock_offset_ns 'soon' is not a whole number of ns"),
    ({"t0_monotonic_ns": 1.5}, "t0_monotonic_ns 1.5 is not a whole number of ns"),
    ({"dilation": 0}, "dilation 0 is not a number >= 1"),
    ({"interfaces": "westb-eth2"}, "interfaces must be a non-empty list"),
    ({"interfaces": [{"mac": WEST_MAC}]}, "has no name (intf)"),
    ({"interfaces": [interface(mac="02:00:00:00:07")]}, "mac '02:00:00:00:07' is not aa:bb:cc:dd:ee:ff"),
    ({"interfaces": [{"intf": INTF, "mac": WEST_MAC}]}, "node and peer must be names"),
    ({"queue_pairs": [{"src": WEST}]}, "queue_pairs must be a list of {src, dst, sqpn, dqpn}"),
    ({"kernel_drops": {INTF: "none"}}, "kernel_drops must map interfaces to packet counts"),
])
def test_a_malformed_capture_description_is_one_line_naming_the_field(tmp_path, broken, problem):
    described = broken if isinstance(broken, list) else meta() | broken
    results(tmp_path, [(T0_NS, data(WEST, EAST, 9, 0, T0_NS))], described)
    with pytest.raises(AnalysisError, match=re.escape(problem)):
        analyze(tmp_path)
