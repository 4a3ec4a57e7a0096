"""Typed run configurations and their command lines: one dataclass per command is the source of the
defaults; argparse only fills one in."""
from __future__ import annotations

import argparse
import dataclasses


def defaults_of(config_type) -> dict:
    return {f.name: f.default for f in dataclasses.fields(config_type) if f.default is not dataclasses.MISSING}


def use_defaults_of(parser: argparse.ArgumentParser, config_type) -> None:
    """Make the parser's defaults (and the ``%(default)s`` in its help) the dataclass's."""
    parser.set_defaults(**defaults_of(config_type))


def from_namespace(config_type, namespace: argparse.Namespace):
    """The configuration held by a parsed namespace (other entries, such as the command, are left out)."""
    values = vars(namespace)
    return config_type(**{f.name: values[f.name] for f in dataclasses.fields(config_type) if f.name in values})


def as_dict(config) -> dict:
    """JSON-ready: paths as strings."""
    return {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in dataclasses.asdict(config).items()}
