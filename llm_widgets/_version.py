"""The package version, at the bottom of the layers: run records and monitor records read it."""

__version__ = "0.1.0"
