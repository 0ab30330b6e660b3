"""The client's version, kept in its own module so packaging can read it without imports."""

__version__ = "0.1.0"
