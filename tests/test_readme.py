"""The README is a front door: short, and its Python example runs as written."""

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of a Markdown text's fenced blocks marked ```language ("": unmarked), in order."""
    blocks, body, marked = [], None, None
    for line in text.splitlines(keepends=True):
        if body is None and line.startswith("```"):
            body, marked = [], line[3:].strip()
        elif body is not None and line.rstrip() == "```":
            if marked == language:
                blocks.append("".join(body))
            body = None
        elif body is not None:
            body.append(line)
    return blocks


def test_the_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text) <= 12_000, f"README.md has {len(text)} characters; the manual lives in docs/"
    assert "./run demo" in text and "./run tests" in text
    assert len(code_blocks(text, "python")) == 1  # one example; the rest is in the docs


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    (example,) = code_blocks(README.read_text(encoding="utf-8"), "python")
    monkeypatch.chdir(tmp_path)  # it writes deploy/fmnist
    exec(compile(example, str(README), "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "deploy" / "fmnist" / "model.safetensors").is_file()
    assert "top-1" in capsys.readouterr().out
