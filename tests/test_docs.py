"""The documentation holds to the code: every config key, command, option and check is in docs/, every config
example there is one the product accepts, and every internal link and heading anchor resolves."""

from __future__ import annotations

import re
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import click
import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pydantic import BaseModel

from checks.registry import load_checks
from scanner.cli import main
from scanner.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN = MarkdownIt("commonmark").enable("table")
DEMO_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/mailwarden demo"
TEST_COMMAND = "bash scripts/test.sh"


def _tokens(page: Path) -> list[Token]:
    return MARKDOWN.parse(page.read_text(encoding="utf-8"))


def _inline(tokens: list[Token]) -> Iterator[Token]:
    """Every inline token (text, code spans, links) of a page, tables included."""
    for token in tokens:
        yield from token.children or ()


def _code_blocks(page: Path, language: str) -> Iterator[str]:
    return (t.content for t in _tokens(page) if t.type == "fence" and t.info.split()[:1] == [language])


# Config keys -------------------------------------------------------------------------------------------------


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The config model a field holds (itself, optional, in a list, or as the values of a table of named
    tables), and whether its tables are named (``[senders.NAME]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType, list):
        for arg in get_args(annotation):
            model, named = _nested(arg)
            if model is not None:
                return model, named
    if origin is dict:
        model, _ = _nested(get_args(annotation)[1])
        return model, model is not None
    return None, False


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """A model's keys as a config file spells them (``from``, not ``sender``), without the internal ones."""
    return {f.alias or name: f for name, f in model.model_fields.items() if not f.exclude}


def _model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key the model accepts, as a dotted path; a named table's name is ``*`` (``senders.*.spf_include``)."""
    for key, field in _fields(model).items():
        path = f"{prefix}{key}"
        yield path
        inner, named = _nested(field.annotation)
        if inner is not None:
            yield from _model_keys(inner, f"{path}.*." if named else f"{path}.")


def _shown_keys(data: dict[str, Any], model: type[BaseModel] | None, prefix: str = "") -> Iterator[str]:
    """Every key an example config sets, as a dotted path matching ``_model_keys`` (unknown keys included)."""
    fields = _fields(model) if model is not None else {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        yield path
        inner, named = _nested(fields[key].annotation) if key in fields else (None, False)
        if inner is None:
            continue
        for table in value if isinstance(value, list) else [value]:
            if named:
                for entry in table.values():
                    yield from _shown_keys(entry, inner, f"{path}.*.")
            else:
                yield from _shown_keys(table, inner, f"{path}.")


def _config_examples(page: Path) -> Iterator[dict[str, Any]]:
    """The TOML blocks of a page that are (parts of) a mailwarden config: every top-level key is a config table.
    Other TOML (a baseline file, a controls mapping, pyproject.toml) is left out."""
    top = set(_fields(Config))
    for block in _code_blocks(page, "toml"):
        data = tomllib.loads(block)
        if data and set(data) <= top:
            yield data


def test_every_config_key_is_documented() -> None:
    known = set(_model_keys(Config))
    shown = {key for page in PAGES for data in _config_examples(page) for key in _shown_keys(data, Config)}
    assert sorted(known - shown) == [], "config keys no TOML example in docs/ shows"
    assert sorted(shown - known) == [], "keys docs/ shows that the config refuses"


def test_the_model_walk_sees_nested_and_named_tables() -> None:
    keys = set(_model_keys(Config))
    assert {"tenants.google.admin", "senders.*.ptr_patterns", "email.from", "email.lists.to",
            "dmarc_reports.imap.archive_folder", "remediation.operators"} <= keys
    assert not {"source", "digest", "email.sender"} & keys


# Commands ----------------------------------------------------------------------------------------------------


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


def _options(command: click.Command) -> set[str]:
    return {o for p in command.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts
            if o.startswith("--")}


def _usages(text: str) -> Iterator[tuple[tuple[str, ...], str]]:
    """Each ``mailwarden VERB [SUB-VERB] ...`` in a text: the command path it names with the rest of its line
    (a group on the way, such as ``dmarc`` in ``mailwarden dmarc import``, with nothing)."""
    for line in text.splitlines():
        for found in re.finditer(r"(?<![\w/.-])mailwarden((?: [a-z][a-z-]*)+)(.*)", line):
            words = found.group(1).split()
            path: tuple[str, ...] = ()
            command: click.Command = main
            for word in words:
                if not isinstance(command, click.Group) or word not in command.commands:
                    break
                if path:
                    yield path, ""
                command = command.commands[word]
                path = (*path, word)
            if path:
                yield path, " ".join(words[len(path):]) + found.group(2)


def _code_texts(page: Path) -> Iterator[str]:
    """The code a page shows: its code spans and the lines of its code blocks."""
    tokens = _tokens(page)
    yield from (t.content for t in _inline(tokens) if t.type == "code_inline")
    yield from (t.content for t in tokens if t.type in ("fence", "code_block"))


def test_every_command_and_option_is_documented() -> None:
    shown: dict[tuple[str, ...], set[str]] = {}
    for page in PAGES:
        for text in _code_texts(page):
            for path, rest in _usages(text):
                shown.setdefault(path, set()).update(re.findall(r"--[a-z][a-z-]*", rest))
    commands = dict(_commands(main))
    assert sorted(" ".join(p) for p in commands.keys() - shown.keys()) == [], "commands docs/ never shows"
    for path, command in commands.items():
        words = " ".join(path)
        assert sorted(_options(command) - shown[path]) == [], f"options of `mailwarden {words}` docs/ never shows"
        assert sorted(shown[path] - _options(command) - _options(main)) == [], \
            f"options docs/ shows for `mailwarden {words}` that it refuses"


# Checks ------------------------------------------------------------------------------------------------------


def test_every_check_is_in_the_catalogue() -> None:
    page = DOCS / "checks.md"
    shown = {t.content for t in _inline(_tokens(page)) if t.type == "code_inline"}
    assert sorted(c.meta.id for c in load_checks() if c.meta.id not in shown) == [], f"checks {page.name} never names"


# The README --------------------------------------------------------------------------------------------------


def test_the_readme_set_up_commands_are_what_ci_runs() -> None:
    commands = [block.strip() for block in _code_blocks(ROOT / "README.md", "sh")]
    assert commands[:2] == [DEMO_COMMAND, TEST_COMMAND]
    assert (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()[-1] == TEST_COMMAND


def test_the_readme_first_scan_config_loads(tmp_path: Path) -> None:
    blocks = list(_code_blocks(ROOT / "README.md", "toml"))
    assert len(blocks) == 1, "the README shows one config: the first scan's"
    path = tmp_path / "mailwarden.toml"
    path.write_text(blocks[0], encoding="utf-8")
    assert load_config(path).tenants


# Links -------------------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, a repeated one numbered as GitHub does (``name``, ``name-1``)."""
    found: set[str] = set()
    tokens = _tokens(page)
    for i, token in enumerate(tokens):
        if token.type != "heading_open":
            continue
        text = "".join(c.content for c in tokens[i + 1].children or () if c.type in ("text", "code_inline"))
        base = anchor = _slug(text)
        count = 0
        while anchor in found:
            count += 1
            anchor = f"{base}-{count}"
        found.add(anchor)
    return found


def _links(page: Path) -> Iterator[str]:
    """The targets of a page's links and images, outside code."""
    for token in _inline(_tokens(page)):
        if token.type == "link_open":
            yield str(token.attrs["href"])
        elif token.type == "image":
            yield str(token.attrs["src"])


def _broken_links(page: Path) -> Iterator[str]:
    """Each relative link of a page whose file, or heading in it, does not exist."""
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a URL (https:, mailto:), not a file of the repository
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            yield f"{target} (no such file)"
        elif anchor and (linked.suffix != ".md" or anchor not in _anchors(linked)):
            yield f"{target} (no such heading)"


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_internal_links_resolve(page: Path) -> None:
    assert list(_broken_links(page)) == []


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# The `store`: runs & snapshots\n\n## Paths\n\n## Paths\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#the-store-runs--snapshots) [b](other.md#paths-1) [c](#here) [d](https://x.example)\n"
                    "[e](missing.md) [f](other.md#nowhere) `[g](missing.md)`\n\n# Here\n", encoding="utf-8")
    assert list(_broken_links(page)) == ["missing.md (no such file)", "other.md#nowhere (no such heading)"]
