"""The README is a front door: short, its links lead somewhere, its Python example runs."""

import re
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


def heading_anchor(heading: str) -> str:
    """A Markdown heading's anchor as GitHub (and the docs site, for these headings) make it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_links_lead_somewhere():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local, "the README links to the docs, the benchmarks and the changelog"
    for link in local:
        path, _, anchor = link.partition("#")
        target = README.parent / path
        assert target.is_file(), f"README.md links to {link}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            assert anchor in map(heading_anchor, headings), f"{link}: no such heading in {path}"


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    (example,) = code_blocks(README.read_text(encoding="utf-8"), "python")
    monkeypatch.chdir(tmp_path)  # it writes deploy/fmnist
    exec(compile(example, str(README), "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "deploy" / "fmnist" / "model.safetensors").is_file()
    assert "top-1" in capsys.readouterr().out
