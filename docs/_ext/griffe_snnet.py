"""A griffe extension for the API reference: snnet's docstrings as mkdocstrings renders them.

snnet's docstrings head their example with ``Example:`` and name code with reST roles
(``:func:`name```); griffe's Google-style parser reads ``Examples:`` sections (doctest blocks,
rendered as code) and Markdown. This rewrites both when the site is built; the source is unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    name = match[2].rsplit(".", 1)[-1] if match[1] else match[2]
    return f"`{name}`"


class SnnetDocstrings(griffe.Extension):
    """``Example:`` becomes ``Examples:`` and ``:role:`name``` becomes ``name`` in code."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_code, value)
