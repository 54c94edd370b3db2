"""Measurements on a running fabric: the checks of ``testbed run``, the probes they and the controller use,
fabric discovery, the fabric controller and its modes, and the comparison of modes."""
