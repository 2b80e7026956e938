"""Option defaults taken from the code that owns them, so that each number is written once.

``default_of("dualvec.server.app:ServerConfig", "port")`` stands for the default of the dataclass field ``port``
(or of a keyword parameter, for a function or class that is no dataclass). The owner is imported only when the
value is needed: when ``resolve_defaults`` runs on the parsed options, or when ``--help`` prints ``%(default)s``.
Building the parser thus imports neither FAISS nor gensim, and ``dualvec query`` starts without them.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
from typing import Any


class ConfigDefault:
    """The default of ``field`` of ``owner`` ("module:QualifiedName"), looked up on first use."""

    _UNSET = object()

    def __init__(self, owner: str, field: str):
        self.owner = owner
        self.field = field
        self._value: Any = self._UNSET

    @property
    def value(self) -> Any:
        if self._value is self._UNSET:
            self._value = _default(_import(self.owner), self.field, self.owner)
        return self._value

    def __str__(self) -> str:  # what argparse's %(default)s shows
        return str(self.value)

    def __repr__(self) -> str:
        return f"default_of({self.owner!r}, {self.field!r})"


def default_of(owner: str, field: str) -> ConfigDefault:
    return ConfigDefault(owner, field)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Replace every option left at its default by the value it stands for (in place; returns ``args``)."""
    for name, value in vars(args).items():
        if isinstance(value, ConfigDefault):
            setattr(args, name, value.value)
    return args


def _import(owner: str) -> Any:
    module_name, _, qualname = owner.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _default(obj: Any, field: str, owner: str) -> Any:
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name == field:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                raise LookupError(f"{owner}.{field} has no default")
        raise LookupError(f"{owner} has no field {field!r}")
    parameter = inspect.signature(obj).parameters.get(field)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise LookupError(f"{owner} has no parameter {field!r} with a default")
    return parameter.default
