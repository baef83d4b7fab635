"""Documentation that cannot drift from the code (issue 25): every setting in docs/configuration.md with its default; no
page naming a variable, command or flag that does not exist; every command and flag in docs/commands.md; the Python
examples valid, those marked `# test: runs` run; the shell lines parsed by the real parsers; the site built strictly."""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from unittest import mock

import pytest

import api.__main__
import consumers.__main__
import consumers.cli
from broker.errors import ConfigurationError
from broker.settings import NOT_SETTINGS, LaneConfig, Settings, check_variables, setting_variables
from tests.processes import PROJECT_ROOT, environment, lane_text

DOCS = PROJECT_ROOT / "docs"
PAGES = (PROJECT_ROOT / "README.md", PROJECT_ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md")))
CONFIGURATION = DOCS / "configuration.md"
COMMANDS = DOCS / "commands.md"
ALLOWED_NON_SETTINGS = NOT_SETTINGS
"""The ORDERLANE_ variables a page may name that are not settings: the list the processes accept too."""
OWN_PACKAGES = frozenset({"api", "broker", "consumers", "shop"})
RUNS = "# test: runs"
"""The first line of a ```python block that this test runs (against RabbitMQ and Redis) and that must exit 0."""
SHELL_OPERATORS = frozenset({"&&", "||", ";", "|", "&", "(", ")"})
"""What ends a simple command (shlex splits them off)."""


@dataclass(frozen=True, slots=True)
class Block:
    """A fenced code block: its language, where it starts (page:line) and its text."""

    language: str
    where: str
    code: str


def name(page: Path) -> str:
    """The page as the failures name it: its path in the repository."""
    return str(page.relative_to(PROJECT_ROOT)) if page.is_relative_to(PROJECT_ROOT) else page.name


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    fences = re.finditer(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", text, flags=re.MULTILINE | re.DOTALL)
    return [
        Block(fence[2], f"{name(page)}:{text.count(chr(10), 0, fence.start()) + 1}", _dedent(fence[3], fence[1]))
        for fence in fences
    ]


def _dedent(code: str, indent: str) -> str:
    """A block inside a list item is indented with its fence."""
    return "".join(line.removeprefix(indent) for line in code.splitlines(keepends=True))


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^( *)```.*?^\1```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)


async def finished(process: asyncio.subprocess.Process, within: float) -> tuple[bytes, bytes]:
    """What `process` wrote, once it exits within `within` seconds; killed if it does not."""
    try:
        async with asyncio.timeout(within):
            return await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- 1. every setting in docs/configuration.md, with its default --------------------------------------------------


def rendered(value: object) -> str:
    """A default as docs/configuration.md writes it, in backticks: str() of it; a tuple joined with commas, lanes as
    ORDERLANE_LANES spells them; "" (None, or an empty tuple) is a cell with no value in backticks: off, or none."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(rendered(item) for item in value)
    if isinstance(value, LaneConfig):
        return lane_text(value)
    return str(value)


def configuration_rows() -> dict[str, list[list[str]]]:
    """docs/configuration.md's table rows by the variable of their first cell: the cells after it."""
    rows: dict[str, list[list[str]]] = {}
    for line in CONFIGURATION.read_text().splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        first = re.fullmatch(r"`(ORDERLANE_\w+)`", cells[0]) if cells else None
        if first is not None:
            rows.setdefault(first[1], []).append(cells[1:])
    return rows


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_the_configuration_page_has_one_row_per_setting_with_its_default(field: str) -> None:
    variable = f"ORDERLANE_{field.upper()}"
    found = configuration_rows().get(variable, [])
    assert len(found) == 1, f"docs/configuration.md: {len(found)} table rows for `{variable}`, not 1"
    [cells] = found
    assert len(cells) >= 2 and cells[1], f"docs/configuration.md: `{variable}`: no meaning in the third cell"
    default = rendered(Settings.model_fields[field].default)
    if default:
        assert cells[0] == f"`{default}`", f"docs/configuration.md: `{variable}`'s default is `{default}`"
    else:
        assert "`" not in cells[0], f"docs/configuration.md: `{variable}` has no default (empty): no value in `...`"


def test_the_configuration_page_has_no_row_for_what_is_not_a_setting() -> None:
    extra = sorted(set(configuration_rows()) - setting_variables())
    assert not extra, f"docs/configuration.md: rows for variables that are not settings: {', '.join(extra)}"


# --- 2. no page names a variable that is not a setting ------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_no_page_names_a_variable_that_is_not_a_setting(page: Path) -> None:
    # A page may quote the refusal of a misspelt variable, which names one.
    text = re.sub(r"\bORDERLANE_\w+ is not a setting", "", page.read_text())
    named = set(re.findall(r"\bORDERLANE_\w*", text))
    # A name ending in _ is a family (`ORDERLANE_HTTP_*`, `ORDERLANE_*`): some setting must start with it.
    families = {family for family in named if family.endswith("_")}
    empty = sorted(family for family in families if not any(v.startswith(family) for v in setting_variables()))
    assert not empty, f"{name(page)}: names {', '.join(empty)}*, and no setting starts so"
    try:
        check_variables(dict.fromkeys(named - families, ""))
    except ConfigurationError as exc:
        pytest.fail(f"{name(page)}: {exc}")


# --- 3. every command and flag in docs/commands.md, and none that does not exist ----------------------------------


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parser_of(main: Callable[[Sequence[str]], int]) -> argparse.ArgumentParser:
    """The parser an entry point builds: caught when it starts parsing, since each builds its own inside main()."""

    def built(parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> NoReturn:
        raise _Built(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", built):
        try:
            main([])
        except _Built as caught:
            return caught.parser
    raise AssertionError(f"{main.__module__}.main() parsed no arguments")


ORDERLANE = parser_of(consumers.cli.main)
API = parser_of(api.__main__.main)
CONSUMERS = parser_of(consumers.__main__.main)
COMMAND_PARSERS = {"orderlane": ORDERLANE, "python -m api": API, "python -m consumers": CONSUMERS}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """`parser`'s subcommands by name; `orderlane api` is `python -m api`'s parser, to which it hands everything."""
    if parser is ORDERLANE:
        return {**_choices(parser), "api": API}
    return _choices(parser)


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path under `parser`: (), ("dlq",), ("dlq", "list"), ..."""
    yield path
    for word, subparser in subcommands(parser).items():
        yield from commands(subparser, (*path, word))


def parser_at(parser: argparse.ArgumentParser, path: Sequence[str]) -> argparse.ArgumentParser:
    for word in path:
        parser = subcommands(parser)[word]
    return parser


def long_flags(parser: argparse.ArgumentParser, *, below: bool = False) -> set[str]:
    """`parser`'s --options (--help included); with `below`, its subcommands' too."""
    flags = {option for action in parser._actions for option in action.option_strings if option.startswith("--")}
    if below:
        for subparser in subcommands(parser).values():
            flags |= long_flags(subparser, below=True)
    return flags | {"--help"}


def test_the_commands_page_names_every_command_and_every_flag() -> None:
    text = COMMANDS.read_text()
    missing = [
        f"`{' '.join(('orderlane', *path))}`"
        for path in commands(ORDERLANE)
        if path and not re.search(rf"\borderlane {' '.join(path)}\b", text)
    ]
    for command, parser in COMMAND_PARSERS.items():
        for path in commands(parser):
            flags = long_flags(parser_at(parser, path)) - {"--help"}
            missing += [
                f"{flag} of `{' '.join((command, *path))}`"
                for flag in sorted(flags)
                if not re.search(rf"(?<![\w-]){flag}(?![\w-])", text)
            ]
    assert not missing, f"docs/commands.md does not name {', '.join(missing)}"


def mentioned_commands(page: Path) -> Iterator[tuple[str, list[str]]]:
    """Every command line of orderlane's a page shows, in inline code or in any code block (without its `$ `), as
    (the command, the words after it)."""
    texts = re.findall(r"`([^`\n]+)`", prose(page))
    texts += [line.removeprefix("$ ") for block in blocks(page) for line in block.code.splitlines()]
    for text in texts:
        for command in COMMAND_PARSERS:
            if text == command or text.startswith(f"{command} "):
                yield command, text.removeprefix(command).split()


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_no_page_names_a_flag_that_does_not_exist(page: Path) -> None:
    unknown = set()
    for command, words in mentioned_commands(page):
        parser, path = COMMAND_PARSERS[command], list[str]()
        for word in words:
            if word not in subcommands(parser_at(parser, path)):
                break
            path.append(word)
        known = long_flags(parser_at(parser, path), below=True)
        used = {flag for word in words for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", word)}
        unknown |= {f"{flag} of `{' '.join((command, *path))}`" for flag in used - known}
    assert not unknown, f"{name(page)} names what does not exist: {', '.join(sorted(unknown))}"


# --- 4. the Python examples: valid, their imports of orderlane resolve, and those marked run ----------------------


def resolves(module: str, attribute: str | None) -> bool:
    """`module` imports and has `attribute` (or a submodule of that name)."""
    imported = importlib.import_module(module)
    if attribute is None or attribute == "*" or hasattr(imported, attribute):
        return True
    return importlib.util.find_spec(f"{module}.{attribute}") is not None


def own_imports(tree: ast.AST) -> Iterator[tuple[str, str | None]]:
    """(module, name) of every import of orderlane's own packages."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names if alias.name.split(".")[0] in OWN_PACKAGES)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OWN_PACKAGES:
            yield from ((node.module, alias.name) for alias in node.names)


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_the_python_examples_are_valid_and_import_what_exists(page: Path) -> None:
    for block in (block for block in blocks(page) if block.language == "python"):
        try:
            tree = ast.parse(block.code)
        except SyntaxError as exc:
            pytest.fail(f"{block.where}: not valid Python: {exc}")
        for module, attribute in own_imports(tree):
            try:
                found = resolves(module, attribute)
            except ImportError as exc:
                pytest.fail(f"{block.where}: `{module}` does not import: {exc}")
            assert found, f"{block.where}: `from {module} import {attribute}`: there is no {attribute}"


RUNNABLE = [block for page in PAGES if page.exists() for block in blocks(page) if block.code.startswith(RUNS + "\n")]


def test_the_readme_has_examples_that_run() -> None:
    assert any(block.where.startswith("README.md:") for block in RUNNABLE), f"README.md: no ```python `{RUNS}` block"


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.where)
async def test_the_marked_examples_run(block: Block, settings: Settings, tmp_path: Path) -> None:
    """In a process of its own, as a user runs it, on this test's queues (the settings fixture deletes them)."""
    example = tmp_path / "example.py"
    example.write_text(block.code)
    env = {**environment(settings), "PYTHONPATH": str(PROJECT_ROOT)}
    piped = asyncio.subprocess.PIPE
    process = await asyncio.create_subprocess_exec(
        sys.executable, example, cwd=PROJECT_ROOT, env=env, stdout=piped, stderr=piped
    )
    out, err = await finished(process, within=60)
    assert process.returncode == 0, f"{block.where}: exit {process.returncode}\n{out.decode()}{err.decode()}"


# --- 5. the shell lines: parsed by the real parsers, make targets that exist --------------------------------------


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (PROJECT_ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def shell_words(line: str) -> list[str]:
    """`line` split as the shell splits it, its operators apart."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True  # shlex's comments start at any # outside quotes, a word's too: not in a URL here
    return list(lexer)


def logical_lines(code: str) -> Iterator[str]:
    """The block's lines, a line ending in \\ joined to the next, as is a quote left open (a JSON body over lines)."""
    pending = ""
    for line in code.replace("\\\n", " ").splitlines():
        pending += line
        try:
            shell_words(pending)
        except ValueError:  # no closing quotation, yet
            pending += "\n"
            continue
        yield pending
        pending = ""
    assert not pending, f"a quote is never closed: {pending}"


def shell_commands(code: str) -> Iterator[list[str]]:
    """The simple commands of a shell block, each as its words without VAR=value before it and redirections after."""
    for line in logical_lines(code):
        words: list[str] = []
        ended = False
        for token in [*shell_words(line), ";"]:
            if token in SHELL_OPERATORS:
                while words and re.match(r"[A-Za-z_]\w*=", words[0]):
                    words.pop(0)
                if words:
                    yield words
                words, ended = [], False
            elif token.startswith((">", "<")):
                if not ended and words and words[-1] in ("0", "1", "2"):  # the 2 of 2>&1
                    words.pop()
                ended = True
            elif not ended:
                words.append(token)


def parse_error(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """What `parser` says about `args`, if it refuses them (--help is accepted)."""
    said = io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
        try:
            parsed = parser.parse_args(args)
            if parser is ORDERLANE and getattr(parsed, "arguments", None) is not None:
                API.parse_args(parsed.arguments)
        except SystemExit as exc:
            return said.getvalue().strip().splitlines()[-1] if exc.code else None
    return None


def command_error(words: list[str], targets: set[str]) -> str | None:
    """Why `words` would not run as orderlane's parsers or the Makefile read them; None if they would (or are not
    orderlane's)."""
    program = words[0].rsplit("/", 1)[-1]
    if program == "make":
        unknown = [word for word in words[1:] if not word.startswith("-") and "=" not in word and word not in targets]
        return f"no make target {', '.join(unknown)}" if unknown else None
    if program == "orderlane":
        return parse_error(ORDERLANE, words[1:])
    if program in ("python", "python3") and words[1:2] == ["-m"] and len(words) > 2:
        parser = {"api": API, "consumers": CONSUMERS}.get(words[2])
        return parse_error(parser, words[3:]) if parser else None
    return None


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_the_shell_lines_parse(page: Path) -> None:
    targets = make_targets()
    errors = [
        f"{block.where}: `{shlex.join(words)}`: {error}"
        for block in blocks(page)
        if block.language in ("sh", "bash")
        for words in shell_commands(block.code)
        if (error := command_error(words, targets))
    ]
    assert not errors, "\n".join(errors)


# --- 6. the site builds strictly -----------------------------------------------------------------------------------


async def strict_build(project: Path, site: Path) -> list[str]:
    """`mkdocs build --strict` of `project` (its mkdocs.yml and docs/) into `site`: its warnings, if it failed."""
    build = ("-m", "mkdocs", "build", "--strict", "--site-dir", str(site))
    process = await asyncio.create_subprocess_exec(
        sys.executable, *build, cwd=project, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await finished(process, within=100)
    if process.returncode == 0:
        return []
    return [line for line in out.decode().splitlines() if line.startswith(("WARNING", "ERROR", "Aborted"))]


async def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """A broken link or anchor, a page missing from the nav or a nav entry without a page fails (mkdocs.yml)."""
    warnings = await strict_build(PROJECT_ROOT, tmp_path / "site")
    assert not warnings, "mkdocs build --strict:\n" + "\n".join(warnings)


# --- each check fails when what it checks goes stale: shown on a broken copy --------------------------------------


def broken_copy(page: Path, tmp_path: Path, old: str, new: str) -> Path:
    """A copy of `page` in `tmp_path` with every `old` replaced by `new`."""
    text = page.read_text()
    assert old in text, f"{name(page)} no longer holds {old!r}: pick another example to break"
    copy = tmp_path / page.name
    copy.write_text(text.replace(old, new))
    return copy


def python_page(tmp_path: Path, code: str) -> Path:
    page = tmp_path / "example.md"
    page.write_text(f"# An example\n\n```python\n{code}```\n")
    return page


def shell_page(tmp_path: Path, line: str) -> Path:
    page = tmp_path / "commands.md"
    page.write_text(f"# Commands\n\n```sh\n{line}\n```\n")
    return page


def test_a_stale_default_or_a_missing_setting_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page, module = DOCS / "configuration.md", sys.modules[__name__]
    row = next(line for line in page.read_text().splitlines() if line.startswith("| `ORDERLANE_QUEUE` |"))
    monkeypatch.setattr(module, "CONFIGURATION", broken_copy(page, tmp_path, row, ""))
    with pytest.raises(AssertionError, match="0 table rows for `ORDERLANE_QUEUE`"):
        test_the_configuration_page_has_one_row_per_setting_with_its_default("queue")
    monkeypatch.setattr(module, "CONFIGURATION", broken_copy(page, tmp_path, row, row.replace("`orders`", "`shop`")))
    with pytest.raises(AssertionError, match="`ORDERLANE_QUEUE`'s default is `orders`"):
        test_the_configuration_page_has_one_row_per_setting_with_its_default("queue")
    unknown = row.replace("`ORDERLANE_QUEUE`", "`ORDERLANE_QUEUES`")
    monkeypatch.setattr(module, "CONFIGURATION", broken_copy(page, tmp_path, row, unknown))
    with pytest.raises(AssertionError, match="not settings: ORDERLANE_QUEUES"):
        test_the_configuration_page_has_no_row_for_what_is_not_a_setting()


def test_a_variable_that_is_not_a_setting_fails(tmp_path: Path) -> None:
    page = broken_copy(CONFIGURATION, tmp_path, "`ORDERLANE_PREFETCH`", "`ORDERLANE_PREFETCH_COUNT`")
    with pytest.raises(pytest.fail.Exception, match="ORDERLANE_PREFETCH_COUNT is not a setting"):
        test_no_page_names_a_variable_that_is_not_a_setting(page)


def test_a_flag_missing_from_the_commands_page_or_one_that_does_not_exist_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "COMMANDS", broken_copy(COMMANDS, tmp_path, "--metrics-port", "--mp"))
    with pytest.raises(AssertionError, match="--metrics-port of `orderlane consume`"):
        test_the_commands_page_names_every_command_and_every_flag()
    with pytest.raises(AssertionError, match="--prefech of `orderlane consume`"):
        test_no_page_names_a_flag_that_does_not_exist(shell_page(tmp_path, "$ orderlane consume --prefech 8"))


def test_an_invalid_example_or_one_importing_what_does_not_exist_fails(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"example.md:3: not valid Python"):
        test_the_python_examples_are_valid_and_import_what_exists(python_page(tmp_path, "def f(:\n"))
    with pytest.raises(AssertionError, match="there is no OrderClients"):
        test_the_python_examples_are_valid_and_import_what_exists(
            python_page(tmp_path, "from broker import OrderClients\n")
        )
    with pytest.raises(pytest.fail.Exception, match=r"`consumers\.testkit` does not import"):
        test_the_python_examples_are_valid_and_import_what_exists(python_page(tmp_path, "import consumers.testkit\n"))


async def test_a_marked_example_that_fails_fails(settings: Settings, tmp_path: Path) -> None:
    failing = Block("python", "example.md:3", f"{RUNS}\nfrom broker import Settings\nassert Settings().queue == 'x'\n")
    with pytest.raises(AssertionError, match=r"(?s)example.md:3: exit 1\n.*AssertionError"):
        await test_the_marked_examples_run(failing, settings, tmp_path)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("orderlane consume --prefech 8", "unrecognized arguments: --prefech"),
        ("ORDERLANE_QUEUE=shop orderlane api --workers 0", "argument --workers: must be at least 1"),
        ("python -m consumers dlq replay --limit 0", "argument --limit: must be 1..65535"),
        ("make docs && make site", "no make target site"),
    ],
)
def test_a_shell_line_the_parsers_refuse_fails(line: str, error: str, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=re.escape(error)):
        test_the_shell_lines_parse(shell_page(tmp_path, line))


async def test_a_broken_link_fails_the_site(tmp_path: Path) -> None:
    (tmp_path / "mkdocs.yml").write_text((PROJECT_ROOT / "mkdocs.yml").read_text())
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\n[Settings](settings.md)\n")
    warnings = await strict_build(tmp_path, tmp_path / "site")
    assert any("'settings.md'" in warning for warning in warnings), warnings
