"""One typed configuration, loaded from one YAML file (or the built-in default) and validated
at load: every problem is reported with its key path, and a config that loads can be trusted.

The package: ``model`` (the sections), ``checks`` (across sections), ``load`` (files, the
environment, the default). Everything is imported from ``turnout.config``.
"""

from __future__ import annotations

from turnout.config import model
from turnout.config.checks import cross_problems
from turnout.config.load import (
    DEFAULT,
    UniqueKeyLoader,
    default_config,
    given,
    load_config,
    not_utf8,
    validate,
    yaml_problem,
)
from turnout.config.model import *  # noqa: F403 - the sections are this package's interface

__all__ = [
    *model.__all__,
    "DEFAULT",
    "UniqueKeyLoader",
    "yaml_problem",
    "cross_problems",
    "default_config",
    "given",
    "load_config",
    "not_utf8",
    "validate",
]
