""" "Did you mean …": the nearest valid name for a typo, and the keys a config model takes at a
place in the document (for an unknown key)."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


def nearest(word: object, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or "" when none is close. Candidates
    that are not text (a YAML key written as a number: ``targets: {1: …}``) are passed over."""
    if not isinstance(word, str):
        return ""
    found = difflib.get_close_matches(word, [c for c in candidates if isinstance(c, str)], n=1, cutoff=0.75)
    return f" (did you mean {found[0]!r}?)" if found else ""


def keys_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at ``loc``'s parent takes (its fields, by alias where one is set);
    empty where the place cannot be told (a union of models, say)."""
    kinds: list[Any] = [model]
    for item in loc[:-1]:
        kinds = [k for kind in kinds for k in _step(kind, item)]
    names: list[str] = []
    for kind in (k for found in kinds for k in _unwrap(found)):  # an optional section: its model
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names.extend(f.alias or name for name, f in kind.model_fields.items())
    return names


def _step(kind: Any, item: int | str) -> list[Any]:
    """What one step of a location leads to from ``kind``."""
    out: list[Any] = []
    for k in _unwrap(kind):
        if isinstance(k, type) and issubclass(k, BaseModel):
            field = k.model_fields.get(str(item)) or next((f for f in k.model_fields.values() if f.alias == item), None)
            if field is not None:
                out.append(field.annotation)
            elif str(item) in _tags(k):  # a discriminated union's branch name
                out.append(k)
        elif typing.get_origin(k) in (dict, list, tuple):
            args = typing.get_args(k)
            if args:
                out.append(args[-1] if typing.get_origin(k) is dict else args[0])
    return out


def _unwrap(kind: Any) -> list[Any]:
    """A type's alternatives: Optional, unions and Annotated opened up."""
    origin = typing.get_origin(kind)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(kind)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [k for arg in typing.get_args(kind) for k in _unwrap(arg)]
    return [kind]


def _tags(model: type[BaseModel]) -> list[str]:
    field = model.model_fields.get("provider")
    if field is None:
        return []
    return [str(a) for a in typing.get_args(field.annotation)]
