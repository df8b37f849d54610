"""The commands and links of README.md and docs/*.md name things that exist.

Every command in a ```bash block of the README or of docs/ that runs a repository script
(``python X.py ...``, ``.venv/bin/python X.py``, ``torchrun ... X.py``, ``$P X.py`` with ``P`` set
in the block) must name a script that exists, and every ``--flag`` it passes must be an option of
that script's argparse parser. ``make X`` must name a target of the Makefile, and the flags in a
``VAR=...`` given to it must be options of the script that the target's recipe passes ``$(VAR)``
to. Every relative link must point to a file that exists (and, for a ``#fragment`` into a
Markdown file, to one of its headings).

The parsers are read without running the scripts' work: one subprocess (this file run as a
script) executes each script as ``__main__`` with ``argparse.ArgumentParser.parse_known_args``
replaced by a function that stops the script with the parser it was about to parse with, so a
parser built inside ``main`` is found as easily as a ``build_parser`` function, and torch is
imported once for all of them.
"""

from __future__ import annotations

import argparse
import json
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.cli import run_script

README = ROOT / "README.md"
DOCS = (README, *sorted((ROOT / "docs").glob("*.md")))
FAMILY_SCRIPTS = tuple(f"{prefix}_{what}.py" for prefix in ("mobile2", "resnet34", "mobile3",
                                                             "proxyless")
                       for what in ("prune", "finetune"))
BLOCK = re.compile(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```", re.S | re.M)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SEPARATORS = {";", "&&", "||", "|", "&"}


@dataclass(frozen=True)
class Command:
    """One command of a code block: where it is, and the script or make target it runs."""

    doc: str
    line: int
    text: str
    script: str | None = None  # a path relative to the repository root
    args: tuple[str, ...] = ()
    make_targets: tuple[str, ...] = ()
    make_vars: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {' '.join(self.text.split())}"


# -- reading the code blocks ---------------------------------------------------------------------


def strip_comment(line: str) -> str:
    """``line`` without its shell comment: a ``#`` that starts a word, outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def logical_lines(block: str, first_line: int) -> list[tuple[int, str]]:
    """The block's lines with comments removed and ``\\`` continuations joined, each with the
    number of the document line it starts on."""
    out, pending, start = [], "", first_line
    for number, raw in enumerate(block.split("\n"), first_line):
        line = strip_comment(raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            out.append((start, pending.strip()))
        pending = ""
    if pending.strip():
        out.append((start, pending.strip()))
    return out


def expand(text: str, variables: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` replaced for the variables set earlier in the block."""
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))
    return VARIABLE.sub(value, text)


def split_words(text: str) -> list[list[str]]:
    """Shell words of a line, split into simple commands at ``;``, ``&&``, ``||``, ``|``."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands, current = [], []
    for word in lexer:
        if word in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    return [c for c in commands if c]


def is_python(word: str) -> bool:
    return re.fullmatch(r"(?:.*/)?python(?:3(?:\.\d+)?)?", word) is not None


def is_torchrun(word: str) -> bool:
    return re.fullmatch(r"(?:.*/)?torchrun", word) is not None


def parse_command(words: list[str], doc: str, line: int, text: str) -> Command | None:
    """The repository script or make target ``words`` runs, or None for anything else."""
    if not words:
        return None
    head, rest = words[0], words[1:]
    if is_python(head):
        while rest and rest[0].startswith("-") and rest[0] != "-m":
            rest = rest[1:]  # interpreter options (-u, -O, ...)
        if not rest or rest[0] == "-m" or not rest[0].endswith(".py"):
            return None  # python -m pytest, python -c ...: not a repository script
        return Command(doc, line, text, rest[0], tuple(rest[1:]))
    if is_torchrun(head):
        for i, word in enumerate(rest):
            if word.endswith(".py"):
                return Command(doc, line, text, word, tuple(rest[i + 1:]))
        return None
    if head == "make":
        targets = tuple(w for w in rest if not w.startswith("-") and "=" not in w)
        assigned = tuple(tuple(w.split("=", 1)) for w in rest if ASSIGNMENT.match(w))
        return Command(doc, line, text, make_targets=targets or ("",), make_vars=assigned)
    if head.endswith(".py"):
        return Command(doc, line, text, head.removeprefix("./"), tuple(rest))
    return None


def commands_of(path: Path, root: Path = ROOT) -> list[Command]:
    """Every command of ``path``'s bash blocks that runs a repository script or make target."""
    text = path.read_text()
    doc = str(path.relative_to(root))
    found = []
    for match in BLOCK.finditer(text):
        first_line = text.count("\n", 0, match.start(1)) + 1
        variables: dict[str, str] = {}
        for number, line in logical_lines(match.group(1), first_line):
            for words in split_words(expand(line, variables)):
                if words[0] == "export":
                    words = words[1:]
                assignments = 0
                for word in words:
                    if not ASSIGNMENT.match(word):
                        break
                    assignments += 1
                if assignments == len(words):  # NAME=value ...: set for the rest of the block
                    variables.update(w.split("=", 1) for w in words)
                    continue
                command = parse_command(words[assignments:], doc, number, line)
                if command is not None:
                    found.append(command)
    return found


def flags(args: tuple[str, ...]) -> list[str]:
    """The option strings among ``args`` (``--x=1`` gives ``--x``), up to a bare ``--``."""
    out = []
    for arg in args:
        if arg == "--":
            break
        if re.match(r"^--[A-Za-z]", arg) or re.match(r"^-[A-Za-z]$", arg):
            out.append(arg.split("=", 1)[0])
    return out


# -- the scripts' parsers ------------------------------------------------------------------------


class _Parsed(BaseException):
    """Raised in place of parsing: carries the parser a script built (a BaseException, so that
    the scripts' own ``except Exception`` / ``except ValueError`` do not catch it)."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def parser_options(script: Path) -> list[str]:
    """Every option string of the parser ``script`` builds when run as ``__main__``."""
    def capture(self, args=None, namespace=None):
        raise _Parsed(self)

    original = argparse.ArgumentParser.parse_known_args
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    argparse.ArgumentParser.parse_known_args = capture
    sys.argv = [str(script)]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _Parsed as parsed:
        return sorted({s for action in parsed.parser._actions for s in action.option_strings})
    finally:
        argparse.ArgumentParser.parse_known_args = original
        sys.argv, sys.path[:] = saved_argv, saved_path
    raise RuntimeError(f"{script} ended without parsing its arguments")


def dump_options(scripts: list[str]) -> dict[str, list[str] | str]:
    """``parser_options`` of each script (relative to the repository root), or the error that
    kept it from being read."""
    out: dict[str, list[str] | str] = {}
    for script in scripts:
        try:
            out[script] = parser_options(ROOT / script)
        except BaseException as error:  # a script may exit: report it, go on
            out[script] = f"{type(error).__name__}: {error}"
    return out


@cache
def all_commands() -> tuple[Command, ...]:
    return tuple(c for path in DOCS for c in commands_of(path))


@cache
def make_recipes() -> dict[str, list[str]]:
    """Each Makefile target with its recipe lines."""
    recipes: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        target = re.match(r"^([A-Za-z0-9_.$()/-]+)\s*:(?!=)", line)
        if target and not line.startswith("\t"):
            current = target.group(1)
            recipes[current] = []
        elif line.startswith("\t") and current is not None:
            recipes[current].append(line.strip())
        elif not line.strip() or line.startswith("#"):
            continue
        else:
            current = None
    return recipes


def scripts_through_make(command: Command) -> list[tuple[str, str]]:
    """(script, value) for each ``VAR=value`` of a make command whose target's recipe passes
    ``$(VAR)`` to a script."""
    out = []
    for target in command.make_targets:
        for name, value in command.make_vars:
            for recipe in make_recipes().get(target, []):
                if f"$({name})" in recipe:
                    script = next((w for w in recipe.split() if w.endswith(".py")), None)
                    if script is not None:
                        out.append((script, value))
    return out


@cache
def options() -> dict[str, list[str] | str]:
    """The option strings of every script the documents run, read in one subprocess."""
    scripts = {c.script for c in all_commands() if c.script is not None}
    scripts |= {s for c in all_commands() if c.make_targets for s, _ in scripts_through_make(c)}
    scripts = sorted(s for s in scripts if (ROOT / s).is_file())
    if not scripts:
        return {}
    # this file as a script (``tests`` importable: the repository root on its path)
    result = run_script(Path(__file__), *scripts, timeout=300, env={"PYTHONPATH": str(ROOT)})
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the tests -----------------------------------------------------------------------------------


def test_extraction_reads_continuations_comments_and_variables(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("\n".join([
        "```bash",
        "P=.venv/bin/python  # the interpreter",
        'D="--dataset synthetic --width 0.5"',
        "$P mobile2_prune.py $D \\",
        "    --epsilon 0.1 --output-dir=runs/a#b   # a comment --not-a-flag",
        "MALLOC_MMAP_MAX_=0 .venv/bin/torchrun --standalone --nproc_per_node=2 \\",
        "    scripts/bench_select.py --whole && make demo PIPELINE_ARGS=--resume",
        "# python not_run.py --x",
        "```",
        "```python",
        "python ignored.py --y",
        "```",
    ]) + "\n")
    found = commands_of(doc, tmp_path)
    assert [(c.line, c.script) for c in found[:2]] == [(4, "mobile2_prune.py"),
                                                       (6, "scripts/bench_select.py")]
    assert flags(found[0].args) == ["--dataset", "--width", "--epsilon", "--output-dir"]
    assert found[0].args[-1] == "--output-dir=runs/a#b"
    assert flags(found[1].args) == ["--whole"]
    assert found[2].make_targets == ("demo",) and found[2].make_vars == (("PIPELINE_ARGS",
                                                                         "--resume"),)
    assert len(found) == 3


def test_the_readme_runs_every_family():
    named = {Path(c.script).name for c in all_commands() if c.doc == "README.md" and c.script}
    missing = [s for s in FAMILY_SCRIPTS if s not in named]
    assert not missing, f"README.md has no command for {missing}"
    assert "gpu_check.py" in named


def test_the_parsers_are_read():
    known = options()
    assert "--width" in known["mobile2_prune.py"] and "--width" not in known["resnet34_prune.py"]
    assert {"--pruned", "--no-tf32"} <= set(known["mobile2_finetune.py"])


def test_scripts_exist_and_accept_their_flags():
    problems = []
    for command in all_commands():
        if command.script is None:
            continue
        path = ROOT / command.script
        if not path.is_file():
            problems.append(f"{command}\n    no such script: {command.script}")
            continue
        known = options()[command.script]
        if isinstance(known, str):
            problems.append(f"{command}\n    could not read {command.script}'s parser: {known}")
            continue
        unknown = [f for f in flags(command.args) if f not in known]
        if unknown:
            problems.append(f"{command}\n    {command.script} has no option {', '.join(unknown)}")
    assert not problems, "\n".join(problems)


def test_make_targets_exist_and_their_variables_carry_known_flags():
    problems = []
    for command in all_commands():
        for target in command.make_targets:
            if target and target not in make_recipes():
                problems.append(f"{command}\n    the Makefile has no target {target!r}")
        for script, value in scripts_through_make(command):
            known = options().get(script)
            if not isinstance(known, list):
                problems.append(f"{command}\n    could not read {script}'s parser: {known}")
                continue
            unknown = [f for f in flags(tuple(shlex.split(value))) if f not in known]
            if unknown:
                problems.append(f"{command}\n    {script} has no option {', '.join(unknown)}")
    assert not problems, "\n".join(problems)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
    problems = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            problems.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            problems.append(f"{target}: {path.name} has no heading #{fragment}")
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 300


if __name__ == "__main__":
    print(json.dumps(dump_options(sys.argv[1:])))
