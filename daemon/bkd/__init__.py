"""bkd: pull-based hardlink snapshot backup daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bkd")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
