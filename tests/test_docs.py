"""The README and docs/*.md say what the programs and the code do, where that can be checked
without running them: every ``--flag`` of a documented command exists in that program's parser
(of its subcommand), every other ``--flag`` the docs name exists in some msclip program or
benchmark script, the training reference table lists TrainConfig's options with their flags,
defaults and help texts, and every relative link (and its #anchor) resolves."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
# flags of other tools that the docs name: torchrun, pip, ruff, docker; and the configuration
# section's placeholders (`--kebab-case`, `--flag` / `--no-flag`)
FOREIGN = {"--nproc_per_node", "--nnodes", "--index-url", "--check", "--shm-size",
           "--kebab-case", "--flag", "--no-flag"}  # fmt: skip
FOREIGN_PREFIXES = ("--rdzv",)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _demo_options() -> set[str]:
    import inspect

    from msclip.cli import demo

    return set(re.findall(r'add_argument\(\s*"(--[\w-]+)"', inspect.getsource(demo)))


@pytest.fixture(scope="module")
def programs() -> list[tuple[re.Pattern[str], object]]:
    """(how a command line names the program, its parser or a fixed set of options)."""
    from msclip.cli import evaluation, finetune, index, inference, scenes, train

    def at(pattern: str) -> re.Pattern[str]:
        return re.compile(r"(?<![\w/.-])" + pattern + r"(?![\w.-])")

    return [
        (at(r"msclip-inference\s+index"), index.build_parser()),
        (at(r"(msclip-inference|inference\.py)"), inference.build_parser()),
        (at(r"(msclip-evaluation|evaluation\.py)"), evaluation.build_parser()),
        (at(r"(msclip-train|train\.py|-m msclip\.train)"), train.build_arg_parser()),
        (at(r"(msclip-index|-m msclip\.index)"), index.build_parser()),
        (at(r"(msclip-scenes|-m msclip\.synthetic)"), scenes.build_parser()),
        (at(r"(msclip-finetune|-m msclip\.finetune)\s+grid"), finetune.build_grid_parser()),
        (at(r"(msclip-finetune|-m msclip\.finetune)"), finetune.build_parser()),
        (at(r"-m msclip\.cli\.demo"), _demo_options()),
    ]


def _commands(text: str) -> list[str]:
    """Command lines of the code blocks (continuations joined; in blocks with ``$`` prompts only
    the prompted lines) and of the inline code spans of the prose."""
    out = []
    for block in FENCE.findall(text):
        lines = block.replace("\\\n", " ").splitlines()
        if any(line.startswith("$ ") for line in lines):
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        out += lines
    prose = FENCE.sub("", text)
    out += re.findall(r"`([^`\n]+)`", prose)
    return out


def _flags_after(match: re.Match[str], line: str) -> list[str]:
    rest = line[match.end() :]
    rest = re.split(r"\s(?:#|\||&&|;)\s", rest)[0]  # up to a comment or the next command
    rest = re.sub(r"\"[^\"]*\"|'[^']*'", "", rest)  # quoted queries, captions ...
    return FLAG.findall(rest)


def test_every_flag_of_a_documented_command_exists_in_its_program(programs):
    checked, wrong = 0, []
    for doc in DOCS:
        for line in _commands(doc.read_text(encoding="utf-8")):
            for pattern, parser in programs:
                m = pattern.search(line)
                if m is None:
                    continue
                if isinstance(parser, set):
                    known = parser
                else:
                    words = line[m.end() :].split()
                    sub = _subparsers(parser).get(words[0]) if words else None
                    known = _options(sub or parser)
                for flag in _flags_after(m, line):
                    checked += 1
                    if flag not in known:
                        wrong.append(f"{doc.name}: {flag} in {line.strip()[:100]!r}")
                break
    assert not wrong, "\n".join(wrong)
    assert checked > 300  # the extraction found the docs' commands


def test_every_flag_the_docs_name_exists_somewhere(programs):
    from msclip.cli.train import OTHER_PROGRAMS_FLAGS

    # the flags of other programs (open_clip's) that msclip-train names its spelling of
    known = set(FOREIGN) | set(OTHER_PROGRAMS_FLAGS)
    for _, parser in programs:
        if isinstance(parser, set):
            known |= parser
        else:
            known |= _options(parser)
            for sub in _subparsers(parser).values():
                known |= _options(sub)
    for script in (ROOT / "benchmarks").glob("*.py"):
        text = script.read_text(encoding="utf-8")
        known |= set(re.findall(r'add_argument\(\s*"(--[\w-]+)"', text))
    wrong = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for flag in FLAG.findall(line):
                if flag not in known and not flag.startswith(FOREIGN_PREFIXES):
                    wrong.append(f"{doc.name}:{n}: {flag}")
    assert not wrong, "\n".join(wrong)


def _field_default(field: dataclasses.Field) -> object:
    missing = field.default is dataclasses.MISSING
    value = field.default_factory() if missing else field.default  # type: ignore[misc]
    return list(value) if isinstance(value, tuple) else value


def test_training_reference_table_is_the_config():
    from msclip.train.config import TrainConfig

    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    row = re.compile(r"^\| `(\w+)` / `(--[\w-]+)` \| ([^|]+) \| `([^`]*)` \| (.*) \|$", re.M)
    rows = {m[0]: m[1:] for m in row.findall(text)}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert sorted(rows) == sorted(fields)
    for name, (flag, _, default, meaning) in rows.items():
        f = fields[name]
        assert flag == "--" + name.replace("_", "-"), name
        assert meaning == f.metadata["help"], name
        value = _field_default(f)
        if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
            shown = [float(v) for v in default.strip("[]").split(",")]  # 4/3 shown as 1.333
            assert shown == pytest.approx(value, abs=5e-4), name
        else:
            assert default == repr(value), name


def _anchors(doc: Path) -> set[str]:
    heads = re.findall(r"^#+ (.*)$", FENCE.sub("", doc.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_relative_links_and_their_anchors_resolve():
    wrong = []
    for doc in [*DOCS, ROOT / "benchmark_datasets" / "README.md"]:
        prose = FENCE.sub("", doc.read_text(encoding="utf-8"))
        for link in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (doc.parent / path).resolve() if path else doc
            if not target.exists():
                wrong.append(f"{doc.name}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                wrong.append(f"{doc.name}: {link} (no such heading)")
    assert not wrong, "\n".join(wrong)


def _all_actions(parser: argparse.ArgumentParser, prog: str):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _all_actions(sub, f"{prog} {name}")
        elif a.option_strings and not isinstance(a, argparse._HelpAction):
            yield prog, a


def test_every_option_has_a_help_text_naming_its_default(programs):
    """``--help`` is the docs a user reads first: each option says what it does and, when it
    has a default value (a number or a word), that value."""
    wrong = []
    for _, parser in programs:
        if isinstance(parser, set):
            continue
        for prog, a in _all_actions(parser, parser.prog):
            if a.help == argparse.SUPPRESS:
                continue
            name = f"{prog} {a.option_strings[-1]}"
            if not a.help:
                wrong.append(f"{name}: no help text")
            elif (
                isinstance(a.default, (int, float, str))
                and not isinstance(a.default, bool)
                and a.default != argparse.SUPPRESS
                and "default" not in a.help
            ):
                wrong.append(f"{name}: default {a.default!r} not in {a.help!r}")
    assert not wrong, "\n".join(wrong)


def test_the_programs_docstrings_name_current_flags(programs):
    """The module docstrings of the programs name flags every program still shows in its --help:
    not a removed one, nor an older form kept hidden for old command lines (``--max-nodata``)."""
    import inspect

    from msclip import cli

    shown = set(FOREIGN)
    for _, parser in programs:
        if isinstance(parser, set):
            shown |= parser
            continue
        for p in [parser, *_subparsers(parser).values()]:
            visible = [a for a in p._actions if a.help != argparse.SUPPRESS]
            shown |= {s for a in visible for s in a.option_strings}
    wrong = []
    for path in sorted(Path(inspect.getfile(cli)).parent.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        wrong += [f"{path.name}: {f}" for f in FLAG.findall(doc) if f not in shown]
    assert not wrong, "\n".join(wrong)
