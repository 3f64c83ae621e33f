"""Settings objects defined once: a frozen dataclass whose fields are also command-line options
and ``key=value`` text settings.

Each field carries its help text, and optionally its choices and a parser for text, as metadata
(:func:`knob`). From that one definition :func:`add_options` adds one argparse option per field
(``max_batch`` is ``--max-batch``; a bool that is on by default is ``--no-NAME``),
:func:`from_args` builds the object from parsed options, and :func:`parse_text` reads a field's
value from text (Ray Serve's ``serve run ... key=value``, config files). A new field reaches
every reader by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def knob(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    *,
    type: Callable[[str], Any] | None = None,
    rule: tuple[str, Callable[[Any], bool]] | None = None,
) -> Any:
    """A settings field with the help text (and choices) its option shows; ``type`` parses the
    option's text (default: the field's annotated type); ``rule`` is ``(what, check)``: the values
    it keeps (:func:`check` reads it; ``None`` always passes).

    Example:
        >>> max_batch: int = knob(8, "images per micro-batch")
    """
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "type": type, "rule": rule}
    )


def check(settings: Any) -> None:
    """Refuse any field of ``settings`` outside its choices or rule, and any float that is not
    finite (inf and nan pass most range checks and then train to nan), naming the field."""
    import math

    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
        choices, rule = f.metadata.get("choices"), f.metadata.get("rule")
        if choices and value not in choices:
            raise ValueError(f"unknown {f.name} {value!r}; choose one of {', '.join(choices)}")
        if rule is not None and not rule[1](value):
            raise ValueError(f"{f.name} must {rule[0]}, got {value}")


@dataclasses.dataclass(frozen=True)
class Option:
    """One field of a settings class, as options and text settings see it."""

    name: str
    default: Any
    kind: type  # the annotated type, ``X | None`` unwrapped to ``X``
    optional: bool  # ``None`` is a value
    help: str
    choices: tuple[str, ...] | None
    parse: Callable[[str], Any]

    @property
    def flag(self) -> str:
        """The command-line option: ``--max-batch``, or ``--no-trace`` for a switch that is on
        by default."""
        name = self.name.replace("_", "-")
        return f"--no-{name}" if self.kind is bool and self.default is True else f"--{name}"


def options(cls: type) -> Iterator[Option]:
    """The fields of settings class ``cls``, in order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        args = typing.get_args(kind)
        optional = type(None) in args
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(t for t in args if t is not type(None))
        meta = f.metadata
        yield Option(
            name=f.name,
            default=f.default,
            kind=kind,
            optional=optional,
            help=meta.get("help", ""),
            choices=meta.get("choices"),
            parse=meta.get("type") or (_parse_bool if kind is bool else kind),
        )


def add_options(group: argparse._ActionsContainer, cls: type) -> None:
    """One option per field of ``cls`` with the field's type, default, help and choices."""
    for o in options(cls):
        help_text = o.help.replace("%", "%%")
        if o.kind is bool:  # a switch: --name turns on what is off by default, --no-name off
            if o.default is True:
                help_text += f" (default: on; {o.flag} turns it off)"
            action = "store_false" if o.default is True else "store_true"
            group.add_argument(o.flag, dest=o.name, action=action, help=help_text)
            continue
        if o.default is not None:
            help_text += f" (default {o.default})"
        group.add_argument(
            o.flag,
            dest=o.name,
            type=o.parse,
            default=o.default,
            choices=o.choices,
            help=help_text,
        )


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The ``cls`` that parsed options give (the object checks its own values)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def parse_text(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (text, or values already typed) as typed fields of ``cls``; unknown keys and
    values that do not parse are a ``ValueError`` naming the field. For a field that may be
    ``None``, ``"none"`` and ``""`` are ``None``."""
    known = {o.name: o for o in options(cls)}
    out = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown setting {key!r}; choose from {', '.join(known)}")
        o = known[key]
        if value is None or (o.optional and str(value).strip().lower() in ("none", "")):
            out[key] = None
            continue
        try:
            out[key] = o.parse(value) if isinstance(value, str) else o.kind(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"setting {key}={value!r}: {e}") from None
        if o.choices is not None and out[key] not in o.choices:
            raise ValueError(f"setting {key}={value!r}: choose from {', '.join(o.choices)}")
    return out


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")
