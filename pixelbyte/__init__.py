"""PixelByte: text and pixel images in one token stream."""
from importlib import metadata

try:  # pyproject.toml holds the one version number; the installed metadata carries it
    __version__ = metadata.version("pixelbyte")
except metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
