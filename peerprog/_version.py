"""The package version (one place; the API and the CLI report it)."""

__version__ = "0.1.0"
