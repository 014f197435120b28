"""Validation errors of a /v1 request body in the user's terms: the field path as the request spells it, and one
message per field.

Pydantic reports a value that fits no member of a union once per member, each under a location that names the
member's internal schema (`content.str`, `content.list[tagged-union[function-after[...], ...]]`), and a
discriminated union's tag as one more step (`content.0.text.text`). Walking each location along the request
model's own types tells those steps from the user's: they are dropped, and
- when the value has the shape of one member (a list for `str | list[...]`), only that member's errors are kept;
- when it fits none, the member errors become one: "must be a string or a list of content parts".
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from service.api.bodies import read_json

M = TypeVar("M", bound=BaseModel)

# error types that say "the value is not of this member's type": the value was meant for another member
_MISMATCH = {"string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type", "model_type",
             "model_attributes_type", "literal_error", "none_required", "is_instance_of", "int_from_float",
             "int_parsing", "float_parsing", "bool_parsing", "tuple_type", "set_type", "frozen_set_type"}


async def read_openai_json(request: Request, model: type[M]) -> M:
    """`read_json`, with the validation errors of `model` said in the user's terms."""
    try:
        return await read_json(request, model)
    except RequestValidationError as err:
        raise RequestValidationError(user_errors(err.errors(), model)) from None


def field_error(loc: tuple[str | int, ...], message: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 about one request field found wrong after parsing, in the same shape as the parser's own."""
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": message}])


@dataclass
class _Fork:
    """Where an error's location went through a union: the user's path there, the union's members, which member."""

    path: tuple[str | int, ...]
    members: tuple[Any, ...]
    member: Any
    top: bool  # the error is about the member's own type, not something inside it


@dataclass
class _Walked:
    error: dict[str, Any]
    path: tuple[str | int, ...]
    forks: list[_Fork] = field(default_factory=list)


def user_errors(errors: Sequence[Any], model: type[BaseModel]) -> list[dict[str, Any]]:
    """Pydantic's errors for a body of `model` (locations starting with "body") -> errors with the user's
    locations and one error per union field whose value fit none of its members."""
    walked = [_walk(dict(error), model) for error in errors]
    return [_as_error(item) for item in _resolve(walked)]


def _as_error(item: _Walked) -> dict[str, Any]:
    error = dict(item.error)
    error["loc"] = ("body", *item.path)
    error["msg"] = _plain(error)
    return error


def _plain(error: dict[str, Any]) -> str:
    """Pydantic's message in the style of the rest: "must be ..." rather than "Input should be ..."."""
    message = str(error.get("msg", ""))
    if message.startswith("Input should be "):
        return "must be " + message.removeprefix("Input should be ")
    return message


def _resolve(walked: list[_Walked]) -> list[_Walked]:
    """Settle the first union each error went through, outermost first, keeping the errors' order."""
    out: list[_Walked] = []
    groups: dict[tuple[str | int, ...], list[_Walked]] = {}
    order: list[tuple[str | int, ...] | int] = []
    for index, item in enumerate(walked):
        if not item.forks:
            order.append(index)
            continue
        key = item.forks[0].path
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(item)
    for entry in order:
        if isinstance(entry, int):
            out.append(walked[entry])
            continue
        group = groups[entry]
        meant = [item for item in group if not item.forks[0].top]
        if meant:  # the value has the shape of a member: what is wrong inside it
            out += _resolve([_Walked(item.error, item.path, item.forks[1:]) for item in meant])
        else:
            fork = group[0].forks[0]
            error = {"type": "union_type", "loc": fork.path, "input": group[0].error.get("input"),
                     "msg": "must be " + " or ".join(_describe(member) for member in fork.members)}
            out.append(_Walked(error, fork.path))
    return out


def _walk(error: dict[str, Any], model: type[BaseModel]) -> _Walked:
    loc = list(error.get("loc", ()))
    if loc and loc[0] == "body":
        loc = loc[1:]
    item = _Walked(error, ())
    tp: Any = model
    i = 0
    while i < len(loc):
        tp, info = _unwrap(tp)
        segment = loc[i]
        if _is_union(tp):
            members = tuple(m for m in get_args(tp) if m is not type(None))
            if len(members) == 1:  # Optional[X]: no step of its own
                tp = members[0]
                continue
            if info.discriminator is not None:  # the step is the tag value
                member = _tagged(members, info.discriminator, segment)
            else:  # the step names the member's schema
                member = _labelled(members, str(segment))
            rest = len(loc) - i - 1
            item.forks.append(_Fork(item.path, members, member, top=rest == 0 and error.get("type") in _MISMATCH))
            tp = member
            i += 1
            continue
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(segment, str):
            found = tp.model_fields.get(segment)
            tp = found.annotation if found is not None else Any
        elif get_origin(tp) in (list, tuple, set, frozenset, Sequence) and isinstance(segment, int):
            args = get_args(tp)
            tp = args[0] if args else Any
        elif get_origin(tp) is dict:
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            tp = Any
        item.path = (*item.path, segment)
        i += 1
    tp, info = _unwrap(tp)
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found") and info.discriminator is not None:
        _name_the_tag(item, str(info.discriminator))
    return item


def _name_the_tag(item: _Walked, discriminator: str) -> None:
    """A part whose `type` is missing or unknown: the error is the `type` field's."""
    error = dict(item.error)
    context = error.get("ctx") or {}
    if error["type"] == "union_tag_invalid":
        error["msg"] = f"must be one of {context.get('expected_tags', '')} (got {context.get('tag', '')!r})"
    else:
        error["msg"] = "Field required"
    item.error = error
    item.path = (*item.path, discriminator)


@dataclass
class _Info:
    discriminator: Any = None
    title: str | None = None


def _unwrap(tp: Any) -> tuple[Any, _Info]:
    """`Annotated[X, Field(...)]` -> X and what its Field says (discriminator, title)."""
    info = _Info()
    while get_origin(tp) is Annotated:
        tp, *metadata = get_args(tp)
        for meta in metadata:
            if isinstance(meta, FieldInfo):
                info.discriminator = info.discriminator or meta.discriminator
                info.title = info.title or meta.title
    return tp, info


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _tagged(members: tuple[Any, ...], discriminator: Any, tag: Any) -> Any:
    for member in members:
        member, _ = _unwrap(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            found = member.model_fields.get(str(discriminator))
            if found is not None and get_origin(found.annotation) is Literal and tag in get_args(found.annotation):
                return member
    return Any


def _labelled(members: tuple[Any, ...], label: str) -> Any:
    """The member pydantic names `label` in a location: `str`, `list[...]`, `dict[str,any]`, a model's name."""
    for member in members:
        bare, _ = _unwrap(member)
        origin = get_origin(bare)
        if isinstance(bare, type) and issubclass(bare, BaseModel):
            if bare.__name__ in label:
                return member
        elif origin is not None:
            if label.split("[", 1)[0] == getattr(origin, "__name__", ""):
                return member
        elif isinstance(bare, type) and label.split("[", 1)[0] == bare.__name__:
            return member
    return Any


_WORDS = {str: ("a string", "strings"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          bool: ("true or false", "booleans")}


def _describe(tp: Any, plural: bool = False) -> str:
    """A type in the words of the API's users."""
    tp, info = _unwrap(tp)
    if info.title:
        return f"{info.title}s" if plural else f"a {info.title}"
    if tp in _WORDS:
        return _WORDS[tp][plural]
    origin = get_origin(tp)
    if origin in (list, tuple, set, frozenset):
        args = get_args(tp)
        return "lists" if plural else ("a list of " + _describe(args[0], plural=True) if args else "a list")
    if origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "objects" if plural else "an object"
    if origin is Literal:
        return "one of " + ", ".join(repr(value) for value in get_args(tp))
    if _is_union(tp):
        return " or ".join(_describe(member, plural) for member in get_args(tp) if member is not type(None))
    return "values" if plural else "a value"

