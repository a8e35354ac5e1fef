"""The one Jinja environment: packaged `templates/`, optionally overridden by a user directory."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import jinja2


def template_environment(user_dir: Path | None = None) -> jinja2.Environment:
    """A strict Jinja environment; templates in `user_dir` override packaged ones by name."""
    loaders: list[jinja2.BaseLoader] = []
    if user_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(user_dir)))
    loaders.append(jinja2.FileSystemLoader(str(files("microexport.templates"))))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
