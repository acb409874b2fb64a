"""The web UI's static files (``static/``): the dashboard and the in-browser inference
page, plain HTML, CSS and JavaScript modules with no build step and nothing fetched from
elsewhere. :mod:`peerprog.api.ui` serves them on the TCP listener under ``/ui/``."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""Where the files served under ``/ui/`` live (one flat folder)."""
