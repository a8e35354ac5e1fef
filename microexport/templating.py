"""The one Jinja environment: packaged `templates/`, optionally overridden by a user directory.

Every stage that writes C or build files (codegen, glue, platforms, protocol) renders through
`glue_environment` and `render`, so `--templates DIR` overrides any packaged template the same way.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2

from microexport.errors import Error

BUILTIN_PREFIX = "builtin"  # `builtin/<path>` always names the packaged template


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


class _BasenameLoader(jinja2.FileSystemLoader):
    """Looks a template up in one directory by its bare file name (`interface/x.j2` → `x.j2`)."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        return super().get_source(environment, posixpath.basename(template))


def glue_environment(template_dir: Path | None = None) -> jinja2.Environment:
    """The shared template environment with `template_dir` overriding by path or file name.

    Packaged templates stay reachable as `builtin/<path>`, so an override can wrap the original
    (`{% include "builtin/interface/tvmgen_model.h.j2" %}`).
    """
    base = template_environment(None)
    packaged = base.loader
    assert packaged is not None
    loaders: list[jinja2.BaseLoader] = [jinja2.PrefixLoader({BUILTIN_PREFIX: packaged})]
    if template_dir is not None:
        if not Path(template_dir).is_dir():
            raise Error(f"templates directory '{template_dir}' does not exist")
        loaders += [
            jinja2.FileSystemLoader(str(template_dir)),
            _BasenameLoader(str(template_dir)),
        ]
    loaders.append(packaged)
    return base.overlay(loader=jinja2.ChoiceLoader(loaders))


def render(env: jinja2.Environment, template: str, variables: Mapping[str, Any]) -> str:
    """Render one template; a broken or missing template becomes a one-line `Error`."""
    try:
        return env.get_template(template).render(**variables)
    except jinja2.TemplateSyntaxError as err:
        where = err.filename or err.name or template
        raise Error(f"template {where}:{err.lineno}: {err.message}") from None
    except jinja2.TemplateNotFound as err:
        raise Error(f"template '{err.name}' not found") from None
    except jinja2.UndefinedError as err:
        raise Error(f"template {template}: {err.message} (see docs/templates.md)") from None
