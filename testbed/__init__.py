"""Scale-across AI networking testbed: multi-site fabrics emulated with Mininet and kernel tc.

The code is layered; a module imports only from its own layer and the layers below it, never in a circle
(``tests/unit/test_layers.py`` enforces both).  Bottom to top:

- ``testbed.model``: the declared fabric (sites, DCI links, link settings) and its units, plain data;
- ``controllers``: pure algorithms (congestion control behind one interface and a registry, the latency
  governor's decisions), which know nothing of kernels or processes;
- ``testbed.net``: the fabric in the kernel: Mininet topology, shaped links (``testbed.net.tc``), routes,
  the running ``Testbed``, kernel probing, the microVM, cleanup and interrupts; ``testbed.topologies``
  loads a topology script by name or path;
- ``testbed.roce``: the RoCEv2-framed transport: wire format, NIC, queue-pair ends, queue pairs;
- ``testbed.collective``: NCCL-style schedules, rank processes, the runner, nccl-tests' format, bounds;
- ``testbed.observe``: what a run records while it runs: telemetry, packet captures;
- ``testbed.experiments``: measurements on a running fabric: the run's checks, discovery probes, the
  fabric controller, the modes and their comparison;
- ``testbed.results``: what a run shows and leaves: terminal tables and live view, files, the capture
  analysis, plots, the HTML report;
- ``testbed.commands`` and ``testbed.cli``: the ``testbed`` command: parsing and one module per command.
"""

__version__ = "0.1.0"

# (layer, the modules in it): a module may import from its own layer and those before it
LAYERS = (
    ("model", ("testbed.model",)),
    ("controllers", ("controllers",)),
    ("net", ("testbed.net", "testbed.topologies")),
    ("roce", ("testbed.roce",)),
    ("collective", ("testbed.collective",)),
    ("observe", ("testbed.observe",)),
    ("experiments", ("testbed.experiments",)),
    ("results", ("testbed.results",)),
    ("commands", ("testbed.commands", "testbed.cli", "testbed.__main__")),
)
