"""optionfeed: complete tick history of Deribit options in PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("optionfeed")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
