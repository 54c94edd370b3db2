"""Keep every flow's packets in order through the emulator: receive packet steering on every interface.

A veth hands a packet to the namespace at its other end through the backlog of the CPU that transmitted it
(``netif_rx``).  A shaped queue releases a flow's packets from whichever CPU is dequeuing at the time (the
sender's ``sendto`` on one, HTB's watchdog timer or the previous hop's softirq on another), so consecutive
packets of one flow can wait in two CPUs' backlogs, drained by two CPUs at once, and reach the next hop swapped.
A fabric's switches and NICs never do that to a flow (ECMP hashes a flow onto one path, every queue is FIFO),
and RoCE counts on it: a responder takes a later PSN as a loss, NAKs, and the requester goes back N.

Measured in the microVM (2 vCPUs, TCG; ``two_sites`` 2 hosts per site, 40/20 Gbit/s at 10 km, k 3,300, one 4 MB
all_reduce of four ranks): with no drop at any queue of the fabric (every node sampled), none in the CPUs'
backlogs (``/proc/net/softnet_stat``) and none at the ranks' sockets, the DCQCN baseline retransmitted
810-1,626 packets per run.  Its intra-site flows showed the signature of a swap: 1 packet out of order,
1 NAK, 2 retransmitted, 1 duplicate; its DCI flows a swap per NAK followed by a window of go-back-N.

RPS chooses the backlog by the flow's hash instead of the transmitting CPU: at every hop all of a flow's
packets pass through one CPU's backlog, in the order the queue released them, while different flows still
spread over the CPUs.  The mask is written to ``/sys/class/net/<intf>/queues/rx-*/rps_cpus`` of each node's
interfaces.  sysfs lists a namespace's interfaces only when mounted from inside it, so the write runs in a
private mount namespace of the node with the old sysfs detached and a new one mounted, as ``ip netns exec``
does; nothing outside the node sees either.
"""

import os

ALL_CPUS_GROUP_BITS = 32  # a sysfs CPU mask is written in comma-separated groups of 32 bits
_GROUP = (1 << ALL_CPUS_GROUP_BITS) - 1


def cpu_mask(cpus: int) -> str:
    """The sysfs bitmap of CPUs 0 .. ``cpus`` - 1, e.g. ``3`` for two, ``ffffffff,ffffffff`` for 64."""
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, not {cpus}")
    mask = (1 << cpus) - 1
    groups = []
    while mask:
        groups.append(f"{mask & _GROUP:x}")
        mask >>= ALL_CPUS_GROUP_BITS
    return ",".join(reversed(groups))


def steer(node, cpus: int | None = None) -> None:
    """Give every receive queue of ``node``'s interfaces (a Mininet node) RPS over all ``cpus`` (default: this
    machine's); raises RuntimeError naming the node if the kernel refuses (no CONFIG_RPS, no sysfs)."""
    names = [intf.name for intf in node.intfList() if intf.name != "lo"]
    if not names:
        return
    mask = cpu_mask(cpus or os.cpu_count() or 1)
    queues = " ".join(f"/sys/class/net/{name}/queues/rx-*/rps_cpus" for name in names)
    script = f"umount -l /sys && mount -t sysfs sysfs /sys && for q in {queues}; do echo {mask} > $q || exit 1; done"
    output = node.cmd(f"unshare --mount sh -c '{script}' 2>&1; echo rc=$?")
    if not output.rstrip().endswith("rc=0"):
        raise RuntimeError(f"{node.name}: could not set receive packet steering: {output.strip().splitlines()[0]}")
