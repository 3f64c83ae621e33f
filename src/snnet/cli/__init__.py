"""``snnet`` command line. Each command lives in its own module with ``add_parser`` and ``run``.

Only the module of the command being run is imported, so ``snnet --help`` lists the commands
without importing torch; a command module imports the library inside ``run`` (and its own
``add_parser`` needs nothing heavy), so ``snnet COMMAND --help`` is fast too.

Errors a user can fix (a bad value, a missing or unwritable path) end the command with exit code
2 and one line on stderr that names the fix, never a traceback: library code raises
``ValueError`` / ``OSError`` with such a message and :func:`main` prints it.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from typing import NoReturn

from snnet.threads import keep_freed_memory, wait_passively

wait_passively()  # before any command imports torch: libgomp reads OMP_WAIT_POLICY once
keep_freed_memory()  # every command: a training step touches no fresh pages

#: Command name -> one-line help; the command lives in module ``snnet.cli.<name>``.
COMMANDS = {
    "demo": "Run the whole pipeline offline on Fashion-MNIST: LS init, train, evaluate, plot.",
    "zoo": "Show or rebuild the shipped Fashion-MNIST demo anchors (list | train --all).",
    "stitches": "List every stitch of a family with its GMACs and params.",
    "train": "Train a family's stitches (least-squares init, then one stitch per step).",
    "evaluate": "Top-1/top-5 of every stitch of a saved network in one pass over the data.",
    "importance": "Rank a run's stitches by the importance estimated in training (vs top-1).",
    "plot": "Plot accuracy against GMACs/params/latency with the Pareto front (PNG).",
    "latency": "Measure every stitch's latency on this machine into a results file.",
    "select": "Pick the most accurate stitch within a budget (GMACs, params, latency).",
    "export": "Export one stitch as a standalone model, or the front as one switchable artifact "
    "(safetensors, ONNX, torch.export).",
    "serve": "Serve a run over HTTP, holding a latency SLO by switching stitches.",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other snnet error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``snnet`` parser: every command by name and help, and the options of ``command``
    alone (importing its module, and no other)."""
    parser = _Parser(
        prog="snnet", description="Stitchable Neural Networks: one network for every budget."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"snnet.cli.{name}")
            module.add_parser(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``snnet`` with ``argv`` (default: the process's arguments); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the first positional
    # --help and bad options raise SystemExit (argparse's own way), after printing why.
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    if args.command != "serve":  # the server logs in its own format
        _show_library_messages()
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # e.g. `snnet stitches deit | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"snnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        message = user_error(e)
        if message is None:
            raise
        print(f"snnet {args.command}: error: {message}", file=sys.stderr)
        return 2


class _ToStderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a message comes (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _show_library_messages() -> None:
    """What the library reports while it works (the anchors' scores before training, a
    checkpoint re-headed), as plain lines on stderr."""
    log = logging.getLogger("snnet")
    if not log.handlers:
        handler = _ToStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def user_error(e: BaseException) -> str | None:
    """The one line to print for an error the user can fix, or ``None`` for a bug (which keeps
    its traceback). An ``OSError`` is the user's when it names one of their paths."""
    if isinstance(e, ValueError):
        return " ".join(str(e).splitlines())
    if not isinstance(e, OSError):
        return None
    if e.errno is None:  # raised by snnet with its own message: "--data x does not exist"
        return " ".join(str(e).splitlines())
    path = e.filename
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" in {path}" if path else ""
        return (
            f"{e.strerror}{where}: free some space or write elsewhere (--out); what was there "
            "before is kept (snnet writes a temporary file, then renames it)"
        )
    if e.errno == errno.EROFS:
        return f"{path or 'the output'} is on a read-only file system: write elsewhere (--out)"
    if path is None:
        return None
    if isinstance(e, PermissionError):
        return f"permission denied: {path}; choose a path you may use, or change its permissions"
    if isinstance(e, IsADirectoryError):
        return f"{path} is a directory; give a file path"
    if isinstance(e, NotADirectoryError):
        return f"{path} is not a directory (a file is in the way); choose another path"
    if isinstance(e, FileNotFoundError):
        return f"{path} does not exist; check the path"
    return f"{path}: {e.strerror or e}; check the path"


if __name__ == "__main__":
    sys.exit(main())
