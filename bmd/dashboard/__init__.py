"""The dashboard's static files (``static/``: one page, its script and its style; no build step, nothing
fetched from outside: data centres are often offline). bmd serves them (:mod:`bmd.api.dashboard`); the page
reads the same API as everyone else."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
