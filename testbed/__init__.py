"""Scale-across AI networking testbed: multi-site fabrics emulated with Mininet and kernel tc."""

__version__ = "0.1.0"
