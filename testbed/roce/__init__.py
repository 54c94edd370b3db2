"""The RoCEv2-framed transport over UDP: wire format, PSN arithmetic, a software NIC per host, the two ends
of a queue pair (pacing, window, go-back-N or selective repeat, RTO), and queue pairs between hosts."""
