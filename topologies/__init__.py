"""Runnable topology scripts; ``testbed run NAME`` loads ``topologies/NAME.py`` and its ``topos`` dict."""
