"""The baseline is off-the-shelf parts, each knob pinned to the value its source gives (issue 14: it must not
be tuned to lose).  Sources, also in ``controllers/dcqcn.py``, ``testbed/model/fabric.py`` and
``testbed/collective/schedules/model.py``:

- mlx5 firmware: ``mstconfig -e q`` of a ConnectX-4 Lx (k8snetworkplumbingwg/sriov-network-operator,
  pkg/vendors/mellanox/mellanox_test.go, Default = Current) and NVIDIA's "DCQCN CC parameters" page;
- the DCI router: SONiC's AZURE_LOSSLESS WRED profile (files/build_templates/qos_config.j2);
- NCCL: src/include/device.h (NCCL_STEPS 8), src/init.cc (NCCL_BUFFSIZE 4 MiB), src/graph/connect.cc
  (channels doubled: 2 per NIC).
"""

import argparse
from dataclasses import asdict

from controllers.dcqcn import MLX5_FIRMWARE, Dcqcn, params_from_spec, slow_fabric_note
from testbed.collective.schedules.model import Algorithm
from testbed.commands import options
from testbed.experiments.modes import lookup
from testbed.model.fabric import DCI_ROUTER_ECN
from testbed.roce.transport import TransportConfig
from testbed.topologies import load_topology

US = 1_000
MLX5 = {  # mstconfig name: value as it reports it -> the knob here
    "rp_min_rate_bps": 1e6,  # RPG_MIN_RATE 1 (Mbit/s)
    "rp_ai_rate_bps": 5e6,  # RPG_AI_RATE 5 (Mbit/s)
    "rp_hai_rate_bps": 50e6,  # RPG_HAI_RATE 50 (Mbit/s)
    "rp_time_reset_ns": 300 * US,  # RPG_TIME_RESET 300 (us)
    "rp_byte_reset_bytes": 32_767,  # RPG_BYTE_RESET 32767
    "rp_threshold": 1,  # RPG_THRESHOLD 1
    "rp_dce_tcp_g": (1024 - 1019) / 1024,  # DCE_TCP_G 1019
    "rp_dce_tcp_rtt_ns": 1 * US,  # DCE_TCP_RTT 1 (us)
    "rp_initial_alpha_value": 1023 / 1024,  # INITIAL_ALPHA_VALUE 1023
    "rp_rate_reduce_monitor_period_ns": 4 * US,  # RATE_REDUCE_MONITOR_PERIOD 4 (us)
    "np_min_time_between_cnps_ns": 4 * US,  # MIN_TIME_BETWEEN_CNPS 4 (us)
}


def test_every_dcqcn_knob_is_the_mlx5_firmware_default_and_only_the_line_rate_is_the_hosts():
    params = MLX5_FIRMWARE.at_line_rate(400e9)
    assert asdict(params) == {**MLX5, "rp_max_rate_bps": 400e9}


def test_the_baseline_mode_runs_the_firmware_dcqcn_across_dcis_and_receivers_pace_cnps_as_the_nic_does():
    baseline = lookup("baseline")
    assert baseline.dci_cc is Dcqcn and not baseline.mechanisms
    assert params_from_spec(baseline.cc_spec(line_rate_bps=25e9)) == MLX5_FIRMWARE.at_line_rate(25e9)
    assert params_from_spec(Dcqcn.spec(line_rate_bps=25e9)) == MLX5_FIRMWARE.at_line_rate(25e9)  # inside sites
    assert TransportConfig().cnp_interval_ns == MLX5["np_min_time_between_cnps_ns"]


def test_the_dci_routers_ship_sonics_lossless_wred_profile():
    assert (DCI_ROUTER_ECN.kmin_bytes, DCI_ROUTER_ECN.kmax_bytes, DCI_ROUTER_ECN.pmax) == (1_048_576, 2_097_152, 0.05)
    topo = load_topology("two_sites")(distance_km=1000, dci_bw_mbps=400_000)  # a buffer of one BDP: 500 MB
    config = topo.linkInfo("westb", "eastb")["config"]
    assert (config.ecn_kmin_bytes, config.ecn_kmax_bytes, config.ecn_pmax) == (1_048_576, 2_097_152, 0.05)


def test_collectives_run_nccls_default_flat_ring_and_step_on_one_channel():
    """NCCL's step; one channel where NCCL runs two, until the NIC shares its port between its QPs (``Algorithm``)."""
    assert Algorithm() == Algorithm(nchannels=1, chunk_bytes=4 * 1024 * 1024 // 8, hierarchical=False)
    parser = argparse.ArgumentParser()
    options.add_algorithm_options(parser)
    assert options.algorithm_from(parser.parse_args([])) == Algorithm()


def test_a_user_declaring_nics_slower_than_any_mlx5_is_told_what_that_does_to_the_baseline():
    assert slow_fabric_note(10e9) is None and slow_fabric_note(400e9) is None
    note = slow_fabric_note(500e6)
    assert note.startswith("note: the NICs are declared at 0.5 Gbit/s, below the 10 Gbit/s") and "\n" not in note
