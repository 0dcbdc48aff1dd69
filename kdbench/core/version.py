"""The installed kdbench version (recorded in every result and run.json)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kdbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
