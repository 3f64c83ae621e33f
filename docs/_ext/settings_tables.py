"""MkDocs hook: the option tables of snnet's settings objects, generated from their one
definition (field help, choices, defaults), so the docs never drift from the code.

A page writes ``<!-- options: snnet.serve.settings:ServeSettings -->`` on a line of its own; the
hook replaces it with a table of the options that settings class generates.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

MARKER = re.compile(r"^<!-- options: ([\w.]+):(\w+) -->$", re.M)


def table(module: str, name: str) -> str:
    from snnet.settings import options

    cls = getattr(importlib.import_module(module), name)
    rows = ["| option | default | what it sets |", "| --- | --- | --- |"]
    for o in options(cls):
        default = "on" if o.default is True else "off" if o.default is False else o.default
        what = o.help.replace("|", "\\|")
        if o.choices:
            what += f" ({', '.join(map(str, o.choices))})"
        rows.append(f"| `{o.flag}` | {'—' if default is None else f'`{default}`'} | {what} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: object) -> str:
    return MARKER.sub(lambda m: table(m.group(1), m.group(2)), markdown)
