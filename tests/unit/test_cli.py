"""Bad command-line input: one line naming what is wrong, exit status 2, nothing built (native)."""

import subprocess
import sys

import pytest

from testbed.net import cleanup


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    (["run", "--distance-km", "-5"], "dci west-east: distance_km -5.0 must be >= 0"),
    (["run", "--distance-km", "far"], "argument --distance-km: invalid float value: 'far'"),
    (["run", "--dci-bw-mbps", "0"], "bw_mbps 0.0 must be > 0"),
    (["run", "--loss-pct", "150"], "loss_pct 150.0 must be <= 100"),
    (["run", "--loss-burst-pkts", "0.5"], "loss_burst_pkts 0.5 must be 0 (independent losses) or >= 1"),
    (["run", "nosuch"], "unknown topology 'nosuch' (available: dumbbell, leaf_spine, three_sites, two_sites)"),
    (["run", "three_sites", "--distance-km", "10"], "topology ThreeSites takes no option 'distance_km'"),
    (["run", "--param", "distance_km"], "--param 'distance_km' must look like KEY=VALUE"),
    (["run", "--param", "distance_km=x"], "--param distance_km='x' is not a number"),
    (["run", "leaf_spine", "--hosts", "0"], "site 'dc1': hosts 0 must be a whole number >= 1"),
    (["run", "--mtu", "50"], "fabric: mtu 50 must be a whole number from 1280 to 9000"),
    (["run", "--sweep", "-b 8M -e 1M"], "invalid sizes for 'minbytes' and 'maxbytes': 8388608 > 1048576"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "--seconds", "nan"], "--seconds nan must be > 0 and at most 3600 s"),
    (["run", "--telemetry-ms", "inf"], "--telemetry-ms inf must be > 0 and at most 60000"),
    (["compare", "--target-queue-ms", "nan"], "--target-queue-ms nan must be > 0 and at most 10000"),
    (["compare", "--distances", "10,1e12"], "every distance must be > 0 and at most 20000 km"),
    (["analyze", "/tmp", "--bin-ms", "nan"], "--bin-ms nan must be > 0"),
    (["run", "--out", "/etc/hostname"], "--out /etc/hostname is a file, not a directory"),
    (["perf", "all_reduce", "--out", "/etc/hostname/run"], "/etc/hostname is a file, not a directory"),
    (["run", "two_sites", "--topology", "three_sites"], "two topologies given: 'two_sites' and --topology"),
    (["run", "--topology", "three_sites", "--distance-km", "10"], "topology ThreeSites takes no option 'distance_km'"),
    (["run", "--reorder-pct", "5", "--delay-ms", "0"], "reorder_pct 5.0 needs a delay_ms > 0"),
    (["compare", "three_sites"], "unrecognized arguments: three_sites"),
    (["perf", "all_reduce", "--dilation", "0.5"], "--dilation '0.5' must be auto or a number from 1 (real time)"),
    (["run", "--dilation", "fast"], "--dilation 'fast' must be auto or a number from 1"),
    (["compare", "--repeat", "0"], "--repeat 0 must be from 1 to 100"),
    (["run", "--distance-km", "10000", "--dci-bw-mbps", "400000"], "buffer_bytes 5000000000 exceeds RED's u32"),
    (["run", "--distance-km", "3000", "--dilation", "20000"], "delay_ms 15 x dilation 20000 is beyond netem's"),
    (["run", "--dci-bw-mbps", "1e-9"], "bw_mbps 1e-09 is below one byte per second"),
    (["perf", "all_reduce", "--channels", "0"], "--channels 0 must be from 1 to 64"),
    (["perf", "all_reduce", "--chunk", "lots"], "--chunk 'lots'"),
    (["perf", "all_reduce", "-d", "complex"], "argument -d/--datatype"),
    (["perf", "broadcast", "-r", "8"], "root"),
    (["perf", "nosuch"], "argument collective: invalid choice: 'nosuch'"),
    (["perf", "all_reduce", "--topology", "nosuch"], "unknown topology 'nosuch'"),
    (["compare", "--modes", "baseline,magic"], "--modes 'baseline,magic': unknown mode 'magic' (modes: baseline"),
    (["compare", "--modes", "adaptive:timers+speed"], "'adaptive:timers+speed': unknown or repeated mechanism speed"),
    (["compare", "--modes", "adaptive:delay+delay"], "unknown or repeated mechanism delay+delay (mechanisms: timers"),
    (["compare", "--ablation", "--modes", "adaptive"], "--ablation runs its own modes: give --modes or --ablation"),
    (["compare", "--distances", "10,far"], "--distances '10,far' must be comma-separated kilometres"),
    (["compare", "--distances", "0"], "every distance must be > 0 and at most 20000 km"),
    (["compare", "--target-queue-ms", "-1"], "--target-queue-ms -1 must be > 0"),
    (["compare", "--collective", "nosuch"], "argument --collective: invalid choice: 'nosuch'"),
    (["compare", "-b", "8M", "-e", "1M"], "invalid sizes for 'minbytes' and 'maxbytes'"),
    (["perf", "all_reduce", "--telemetry-ms", "0"], "--telemetry-ms 0 must be > 0"),
    (["perf", "all_reduce", "--telemetry-scope", "some"], "argument --telemetry-scope: invalid choice: 'some'"),
    (["compare", "--capture", "--snaplen", "40"], "--snaplen 40 must be 0 (whole packets) or from 74"),
    (["run", "--capture", "--capture-links", "westb-nowhere"], "--capture-links: 'westb-nowhere' is not a link"),
    (["perf", "all_reduce", "--capture", "--capture-max-mb", "4"], "--capture-max-mb 4 leaves less than 1 MB"),
    (["analyze", "/nonexistent/results"], "results directory /nonexistent/results does not exist"),
    (["analyze", "/tmp", "--bin-ms", "0"], "--bin-ms 0 must be > 0"),
    (["run", "--hosts", "10000000"], "site 'west': hosts 10000000 must be at most 1000"),
    (["run", "three_sites", "--hosts", "1000"], "site 'west': hosts 1000 must be at most 998"),
    (["run", "leaf_spine", "--sites", "127"], "fabric: 127 sites with 508 hosts in all and 126 DCI links make 1396 "
                                              "links, at most 1000"),
    (["run", "leaf_spine", "--param", "sites=100000000"], "fabric: sites must be at most 254"),
    (["perf", "all_reduce", "-b", "1", "-e", "1G", "-f", "1", "-i", "1"], "the sweep visits 1073741824 sizes, at most"),
    (["perf", "all_reduce", "--channels", "1000000"], "--channels 1000000 must be from 1 to 64"),
    (["perf", "all_reduce", "-e", "1e400"], "invalid size '1e400': must be a finite number of bytes"),
    (["run", "--capture", "--snaplen", "1000000"], "--snaplen 1000000 must be 0 (whole packets) or from 74"),
    (["flows", "--flow", "westh1"], "--flow: flow 'westh1' is not SRC:DST (two host names)"),
    (["flows", "--flow", "westh1:mars"], "--flow: flow 'westh1:mars': no host 'mars' (hosts: easth1, easth2"),
    (["flows", "--flow", "westh1:westh1"], "flow 'westh1:westh1': a host cannot send to itself"),
    (["flows", "--flow", "westh1:easth1", "--flow", "westh1:easth1"], "flow 'westh1:easth1' given twice"),
    (["flows", "--topology", "leaf_spine", "--sites", "1"], "the default flows cross sites and this fabric has one"),
    (["flows", "--size", "0"], "--size '0' must be from 1 byte to 1024 MB"),
    (["flows", "--size", "2G"], "--size '2G' must be from 1 byte to 1024 MB"),
    (["flows", "--modes", "fastest"], "--modes 'fastest': unknown mode 'fastest'"),
    (["flows", "--repeat", "0"], "--repeat 0 must be from 1 to 100"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    records_before = set(cleanup.RUN_DIR.glob("*.json")) if cleanup.RUN_DIR.is_dir() else set()
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    records_after = set(cleanup.RUN_DIR.glob("*.json")) if cleanup.RUN_DIR.is_dir() else set()
    assert records_after == records_before  # nothing was started


def test_cli_without_a_terminal_is_refused_before_a_microvm_boots(monkeypatch, capsys):
    """--cli with standard input not a terminal (here: pytest's) gets one line and exit 2; no VM starts."""
    from testbed import cli
    from testbed.commands import options
    from testbed.net import microvm

    monkeypatch.setattr(microvm, "needed", lambda: "kernel 9.9 has no sch_netem")
    monkeypatch.setattr(microvm, "run", lambda *a, **k: pytest.fail("a microVM was started"))
    monkeypatch.setattr(options, "require_root", lambda: None)
    assert cli.main(["run", "--cli"]) == 2
    assert capsys.readouterr().err.strip() == "testbed: error: --cli needs a terminal: standard input or output " \
                                              "is not one"


def test_cli_on_a_terminal_runs_on_the_microvms_console(monkeypatch, tmp_path):
    from testbed import cli
    from testbed.commands import options
    from testbed.net import microvm

    started = {}
    monkeypatch.setattr(microvm, "needed", lambda: "kernel 9.9 has no sch_netem")
    monkeypatch.setattr(microvm, "run", lambda argv, rwdirs, reason, console=False: started.update(
        argv=argv, console=console) or 0)
    monkeypatch.setattr(options, "require_root", lambda: None)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert cli.main(["run", "--cli", "--out", str(tmp_path / "out")]) == 0
    assert started["console"] is True and "--cli" in started["argv"]


def test_a_run_in_the_microvm_gets_its_report_drawn_on_the_host(monkeypatch, capsys, tmp_path):
    """The VM writes the results; the host draws the plots and the page once it exits, and prints the path."""
    from testbed import cli
    from testbed.commands import options
    from testbed.net import microvm
    from testbed.results import report

    def vm_run(inner, rwdirs, reason, console=False):
        assert "--out" in inner and rwdirs == [tmp_path]
        report.save_page(tmp_path, "a run", "testbed perf all_reduce", {"hosts": 2}, ["# nccl-tests <line>"], None,
                         [])
        return 0

    monkeypatch.setattr(microvm, "needed", lambda: "kernel 9.9 has no sch_netem")
    monkeypatch.setattr(microvm, "run", vm_run)
    monkeypatch.setattr(options, "require_root", lambda: None)
    assert cli.main(["perf", "all_reduce", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "# nccl-tests &lt;line&gt;" in page and "hosts" in page
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out


def test_topology_script_runs_directly_with_the_same_validation():
    result = subprocess.run([sys.executable, "topologies/two_sites.py", "--distance-km", "-1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "distance_km -1.0 must be >= 0" in result.stderr


def test_no_python_the_testbed_starts_imports_from_the_working_directory(tmp_path):
    """A ``numpy.py`` planted where the testbed is started from is never imported by what it starts: the rank
    processes and the report's drawing process (the microVM's inner run uses the same command line)."""
    from testbed.net.processes import python_module

    marker = tmp_path / "imported"
    (tmp_path / "numpy.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('planted')\n")
    for module in ("testbed.collective.rank", "testbed.results.html_report"):
        subprocess.run(python_module(module), cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        assert not marker.exists(), module
    subprocess.run([sys.executable, "-m", "testbed.collective.rank"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=120)
    assert marker.exists()  # without -P the planted module is what runs: the test can tell
