"""Property-based (hypothesis): whatever the checks accept builds, whatever they refuse is one line.

Over the model: any link the fabric's checks accept at a dilation k encodes, every qdisc of it, into a
netlink message through the same encoders the kernel gets (pyroute2's and ours, no kernel asked); anything
refused is a ``TopologyError`` of one line.  Over the CLI: arbitrary strings for numeric options (nan, inf,
huge, negative, not a number) are refused with exit status 2 and one error line, no traceback, or accepted by
validation, which ends where the run would move into the microVM (``microvm.run`` is replaced, so nothing
boots and nothing is built).
"""

import contextlib
import io
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pyroute2.iproute.linux import get_arguments_processor
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from testbed import cli
from testbed.collective import nccl_tests
from testbed.commands import options
from testbed.model import dilation
from testbed.model.fabric import MAX_LINKS, TopologyError
from testbed.net import microvm
from testbed.net.network import check_emulable
from testbed.net.tc import netem, qdisc, red
from testbed.topologies import load_topology

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# every kind of number a user can type, and then some: nan, inf, huge, tiny, negative, zero
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e3, max_value=1e6),
    st.floats(min_value=1e-12, max_value=1e-3),
    st.integers(min_value=-10, max_value=10**6),
    st.integers(min_value=-10**30, max_value=10**30),
    st.sampled_from([0, 1, 100, 2**32, 2**32 - 1, 2**64]),
)


def encode(call: qdisc.TcCall) -> bytes:
    """The netlink message ``ipr.tc`` would send for ``call``, built as pyroute2 builds it (its argument
    processor, then the tc plugin's encoder), without a socket."""
    kwarg = dict(call.params, kind=call.kind, index=1, handle=call.handle)
    if call.parent is not None:
        kwarg["parent"] = call.parent
    request = get_arguments_processor("tc", "add-class" if call.is_class else "add", kwarg)
    msg = tcmsg()
    for name, *_ in msg.fields:
        msg[name] = request.get_value(name, default=0, mode="field")
    for key, value in request.items():
        nla = tcmsg.name2nla(key)
        if msg.valid_nla(nla) and value is not None:
            msg["attrs"].append([nla, value])
    msg.encode()
    return msg.data


def test_the_encoder_helper_fails_as_the_kernel_path_did():
    """The helper reaches the same errors a build met before the checks covered them (issue 15)."""
    netem.register()
    red.register()
    from testbed.model.fabric import LinkConfig
    with pytest.raises(ZeroDivisionError):  # --dci-bw-mbps 1e-9 in the HTB encoder
        [encode(c) for c in qdisc.plan(LinkConfig(bw_mbps=1e-9).resolved(9000), 9000)]
    with pytest.raises(Exception, match="format requires"):  # a netem delay past u32
        [encode(c) for c in qdisc.plan(LinkConfig(bw_mbps=50, delay_ms=1e9).resolved(9000), 9000)]


def weighted(usual: st.SearchStrategy, wild: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` nine times in ten, else ``wild``."""
    return st.integers(0, 9).flatmap(lambda draw: usual if draw else wild)


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Values in the range a user means nine times in ten, anything else the tenth: most examples then get
    past every check, and those that do not are refused by the one they broke."""
    return weighted(valid, NUMBERS)


PERCENT = st.floats(min_value=0, max_value=100)
BYTES = st.integers(min_value=1, max_value=2**33)
DCI = st.fixed_dictionaries({}, optional={
    "delay_ms": mostly(st.floats(0, 1e5)), "jitter_ms": mostly(st.floats(0, 1e3)), "loss_pct": mostly(PERCENT),
    "loss_burst_pkts": mostly(st.one_of(st.just(0), st.floats(1, 100))), "reorder_pct": mostly(PERCENT),
    "duplicate_pct": mostly(PERCENT), "corrupt_pct": mostly(PERCENT), "buffer_bytes": mostly(BYTES),
    "ecn_kmin_bytes": mostly(BYTES), "ecn_kmax_bytes": mostly(BYTES), "ecn_pmax": mostly(st.floats(1e-6, 1)),
})
RATE = st.floats(min_value=1e-6, max_value=1e7)
SIZES = st.fixed_dictionaries({}, optional={
    "distance_km": mostly(st.floats(0, 40_000)), "host_bw_mbps": mostly(RATE), "dci_bw_mbps": mostly(RATE),
    "hosts": mostly(st.integers(1, 600)), "leaves": mostly(st.integers(1, 8)), "spines": mostly(st.integers(1, 8)),
    "mtu": mostly(st.integers(1280, 9000)),
})
TWO_SITES = load_topology("two_sites")


def one_line(error: Exception) -> str:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


@SETTINGS
@given(sizes=SIZES, dci=DCI, k=mostly(st.floats(min_value=1, max_value=dilation.MAX_DILATION)))
def test_a_link_the_model_accepts_encodes_and_one_it_refuses_is_one_line(sizes, dci, k):
    """The production order: the topology validates the declared fabric, the dilation is checked, every link
    is checked at k (``check_emulable``); then each link's qdisc plan at k is encoded."""
    try:
        topo = TWO_SITES(**sizes, **dci)
        k = dilation.check(k)
        check_emulable(topo, k)
    except (TopologyError, ValueError) as error:
        event("refused: " + one_line(error).split(":")[-1].split()[0])
        return
    event("accepted")
    netem.register()
    red.register()
    assert len(topo.links()) <= MAX_LINKS
    for *_, info in topo.links(withInfo=True):
        for call in qdisc.plan(info["config"].dilated(k), topo.fabric.mtu):
            assert encode(call)


def cli_outcome(argv: list[str]) -> str:
    """"accepted" if validation let ``argv`` through to the microVM, else the one error line of a refusal
    (exit status 2); anything else fails the test."""
    started = []
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setattr(microvm, "needed", lambda: "property test: no kernel")
        patch.setattr(microvm, "run", lambda inner, **kw: started.append(inner) or 0)
        patch.setattr(options, "require_root", lambda: None)
        try:
            status = cli.main(argv)
        except SystemExit as exit:  # argparse's own refusals
            status = exit.code
    text = stderr.getvalue()
    assert "Traceback" not in text, text
    event("accepted" if started else "refused")
    if started:
        assert status == 0, text
        return "accepted"
    errors = [line for line in text.splitlines() if "error" in line]
    assert status == 2 and len(errors) == 1, (argv, status, text)
    return errors[0]


OUT = Path(tempfile.mkdtemp(prefix="testbed-properties-")) / "out"  # never created: nothing runs
WILD_TEXT = st.one_of(NUMBERS.map(str), NUMBERS.map(repr),
                     st.sampled_from(["nan", "-inf", "1e400", "", "x", "0x10", "1_0"]))


def text(valid: st.SearchStrategy) -> st.SearchStrategy:
    """What a user types: mostly a number in range, else anything."""
    return weighted(valid.map(str), WILD_TEXT)


TEXT = text(st.one_of(st.integers(1, 500), st.floats(1e-3, 1e4)))
RUN_OPTIONS = ("--seconds", "--telemetry-ms", "--hosts", "--leaves", "--spines", "--distance-km", "--dci-bw-mbps",
               "--host-bw-mbps", "--delay-ms", "--jitter-ms", "--loss-pct", "--loss-burst-pkts", "--buffer-bytes",
               "--ecn-kmin-bytes", "--ecn-kmax-bytes", "--ecn-pmax", "--mtu", "--dilation", "--snaplen",
               "--capture-max-mb")

ACCEPTED_ABOVE = {"--seconds": 1e-300, "--telemetry-ms": 1e-300, "--dci-bw-mbps": 1e-300, "--distance-km": 0,
                  "--hosts": 1, "--loss-pct": 0}


@SETTINGS
@given(chosen=st.dictionaries(st.sampled_from(RUN_OPTIONS), TEXT, min_size=1, max_size=3),
       topology=st.sampled_from(["two_sites", "three_sites", "leaf_spine", "dumbbell"]))
def test_run_options_are_refused_in_one_line_or_accepted_before_anything_is_built(chosen, topology):
    argv = ["run", topology, "--sweep", "", "--capture", "--out", str(OUT),
            *(f"{option}={value}" for option, value in chosen.items())]
    if cli_outcome(argv) == "accepted":
        for option, lowest in ACCEPTED_ABOVE.items():
            if option in chosen:
                assert math.isfinite(float(chosen[option])) and float(chosen[option]) >= lowest, option


SIZE_TEXT = weighted(st.tuples(st.integers(0, 4096), st.sampled_from(["", "K", "M", "G", "k"]))
                     .map(lambda pair: f"{pair[0]}{pair[1]}"), WILD_TEXT)


@SETTINGS
@given(b=text(st.integers(1, 4096)), e=SIZE_TEXT, i=SIZE_TEXT, f=text(st.integers(0, 16)),
       channels=text(st.integers(1, 64)), chunk=SIZE_TEXT)
def test_perf_sweeps_are_bounded_before_anything_is_built(b, e, i, f, channels, chunk):
    argv = ["perf", "all_reduce", "--out", str(OUT), f"-b={b}", f"-e={e}", f"-i={i}", f"-f={f}",
            f"--channels={channels}", f"--chunk={chunk}"]
    if cli_outcome(argv) == "accepted":
        sweep = nccl_tests.parse_args("all_reduce", [f"-b={b}", f"-e={e}", f"-i={i}", f"-f={f}"])
        assert len(sweep.sizes) <= nccl_tests.MAX_SIZES


@SETTINGS
@given(repeat=text(st.integers(1, 100)), target=text(st.floats(1e-3, 1e4)),
       distances=st.lists(text(st.floats(1, 20_000)), min_size=1, max_size=4).map(",".join))
def test_compare_options_are_refused_in_one_line_or_accepted(repeat, target, distances):
    cli_outcome(["compare", "--out", str(OUT), f"--repeat={repeat}", f"--target-queue-ms={target}",
                 f"--distances={distances}"])


@pytest.mark.parametrize("minbytes, maxbytes, factor, step", [
    (1, 2**30, 2, 0), (8, 8 * 2**30, 2, 1), (0, 1000, 1, 7), (64, 64, 1, 1), (5, 4, 2, 1), (3, 10**6, 10, 0),
])
def test_a_sweep_is_counted_without_listing_it(minbytes, maxbytes, factor, step):
    assert nccl_tests.sweep_length(minbytes, maxbytes, factor, step) == len(
        nccl_tests.sizes(minbytes, maxbytes, factor, step))
