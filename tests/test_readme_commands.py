"""Every concrete command that README.md and docs/*.md give (`python -m kdapp ...`, `python benchmarks/NAME.py ...`)
still parses: its script exists, and its flags and choices (run names, parts, precisions) are the ones its parser
takes today. The figures there are only reproducible if the commands that printed them still run.

Commands are read from inline code and from fenced blocks (backslash continuations joined, `# comments` cut);
templates with placeholders ("...", "[--flag]", "A|B", "<x>") and a bare `python -m kdapp COMMAND` named in a
sentence are skipped. Nothing is run past argument parsing."""
import argparse
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from kdapp.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INLINE = re.compile(r"`(python\s+(?:-m\s+kdapp|benchmarks/)[^`]*)`")  # may wrap across lines
TEMPLATE = re.compile(r"\.\.\.|\[|\||<|…")


def commands_in(text: str) -> list[str]:
    """The `python -m kdapp` and `python benchmarks/...` commands of a markdown text, placeholders and all."""
    found = [m.group(1) for m in INLINE.finditer(text)]
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("python -m kdapp", "python benchmarks/")):
                found.append(line)
    return found


def documented() -> list[tuple[str, str]]:
    """(file name, command) for every concrete command of the docs, in order, without repeats."""
    seen, out = set(), []
    for path in DOCS:
        for command in commands_in(path.read_text()):
            command = " ".join(command.split())
            # a subcommand named in a sentence ("`python -m kdapp bench` times models") is no command to run
            mention = command.startswith("python -m kdapp") and len(command.split()) < 5
            if command not in seen and not TEMPLATE.search(command) and not mention:
                seen.add(command)
                out.append((path.name, command))
    return out


COMMANDS = documented()


class _Parsed(Exception):
    """Raised by the patched parse_args once a script's arguments parsed: nothing of the script runs after it."""


def parse_script(script: Path, argv: list[str], monkeypatch) -> None:
    """Run a benchmark script as `python benchmarks/NAME.py ARGV` up to its first parse_args, and no further."""
    source = script.read_text()
    if "parse_args(" not in source and "ab_main(" not in source:  # no parser: it would run whole
        assert argv == [], f"{script.name} takes no arguments"
        return
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    # the scripts import each other, as they do when run; what their top level adds to the path or sets in the
    # environment (HF_HUB_OFFLINE, WANDB_MODE, ...) is undone after the test, so that no other test sees it
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
    monkeypatch.setattr(os, "environ", os.environ.copy())
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _Parsed:
        return
    except SystemExit as e:
        pytest.fail(f"{script.name} refused {argv}: exit {e.code}")
    pytest.fail(f"{script.name} ran to its end without parsing its arguments")


def test_the_docs_give_commands_of_both_kinds():
    assert sum(c.startswith("python -m kdapp") for _, c in COMMANDS) >= 5
    assert sum(c.startswith("python benchmarks/speed.py") for _, c in COMMANDS) >= 5


def test_commands_in_reads_inline_code_and_joined_block_lines():
    text = ("Run `python -m kdapp bench --models a` or `python -m kdapp teacher --model M [--x]`.\n"
            "A wrapped one: `python\n  benchmarks/speed.py --parts arch`.\n"
            "```bash\npython -m kdapp distill --teacher t \\\n  --student s   # a comment\nls\n```\n")
    found = [" ".join(c.split()) for c in commands_in(text)]
    assert found == ["python -m kdapp bench --models a", "python -m kdapp teacher --model M [--x]",
                     "python benchmarks/speed.py --parts arch", "python -m kdapp distill --teacher t --student s"]
    assert TEMPLATE.search(found[1]) and not TEMPLATE.search(found[0])


@pytest.mark.parametrize("where,command", [c for c in COMMANDS if c[1].startswith("python -m kdapp")],
                         ids=lambda c: c[:70] if isinstance(c, str) and c.startswith("python") else None)
def test_kdapp_commands_parse(where, command, capsys):
    argv = shlex.split(command)[3:]
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `{command}` does not parse: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize("where,command", [c for c in COMMANDS if c[1].startswith("python benchmarks/")],
                         ids=lambda c: c[:90] if isinstance(c, str) and c.startswith("python") else None)
def test_benchmark_commands_parse(where, command, monkeypatch, capsys):
    words = shlex.split(command)
    script = ROOT / words[1]
    assert script.is_file(), f"{where}: `{command}`: no {words[1]}"
    try:
        parse_script(script, words[2:], monkeypatch)
    except pytest.fail.Exception:
        raise pytest.fail.Exception(f"{where}: `{command}`: {capsys.readouterr().err.strip()[-400:]}") from None
