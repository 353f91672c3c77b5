"""bmd — bare-metal management daemon."""

__version__ = "0.1.0"
