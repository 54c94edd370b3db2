"""The fabric in the kernel: Mininet topology, shaped links (``tc``), routes, the running ``Testbed``, kernel
probing, the microVM for kernels without netem or RED, cleanup after crashes and interrupts."""
