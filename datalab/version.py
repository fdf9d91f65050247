"""The lab's version, importable without the package's ``open`` (which reaches the pull)."""

__version__ = "0.1.0"
