"""Jinja templates shipped with microexport (see docs/templates.md)."""
