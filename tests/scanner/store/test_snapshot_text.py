"""A snapshot's text is what ``canonical(plain(...))`` has always written, so an object keeps its content hash (and
a store does not see every object change) when the scan encodes it faster (``snapshot_text``)."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

from scanner.dns import mtasts, spf
from scanner.model import Domain, Mailbox, Person, PolicyException, plain
from scanner.store.database import canonical, content_hash, snapshot_text

SNAPSHOT_KINDS = (Domain, Mailbox, Person, PolicyException)
"""What a scan keeps in its snapshot (scanner/pipeline.py, ``snapshot_items``)."""

TEXTS = ("plain", "ünïcödé ✓ 𝄞", 'quote " backslash \\ slash /', "ctl \x00\x01\x1f\x7f tab\tnl\nnl\r",
         "line sep \u2028 para \u2029", "")
TIMES = (datetime(2026, 12, 7, 9, 0, tzinfo=UTC), datetime(2026, 12, 7, 9, 0, 1, 250, tzinfo=UTC),
         datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
         datetime(2025, 1, 2, 3, 4, 5))


def _hints(kind: type) -> dict[str, object]:
    # The model names the DNS dataclasses only for type checkers: give their names to the evaluation.
    return typing.get_type_hints(kind, localns={**vars(mtasts), **vars(spf)})


def _reachable(kinds: tuple[type, ...]) -> list[type]:
    """Every dataclass a snapshot of these kinds can hold, by walking their fields' types."""
    seen: list[type] = []
    pending = list(kinds)
    while pending:
        kind = pending.pop()
        if kind in seen:
            continue
        seen.append(kind)
        for hint in _hints(kind).values():
            pending += [t for t in _leaves(hint) if dataclasses.is_dataclass(t)]
    return seen


def _leaves(hint: object) -> list[object]:
    args = typing.get_args(hint)
    return [leaf for arg in args for leaf in _leaves(arg)] if args else [hint]


def _value(hint: object, n: int, depth: int) -> object:
    """The n-th example value of a type (n picks among strings, times and enum members, so each field of each
    kind gets several)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return None if n % 3 == 2 else _value(options[n % len(options)], n, depth)
    if origin is tuple:
        inner = args[0]
        return tuple(_value(inner, n + i, depth + 1) for i in range(0 if depth > 2 else 2))
    if origin in (dict, typing.Mapping) or (origin is not None and getattr(origin, "__name__", "") == "Mapping"):
        return {f"key {i} {TEXTS[(n + i) % len(TEXTS)]}": _value(args[1], n + i, depth + 1)
                for i in range(0 if depth > 2 else 2)}
    if hint is str:
        return TEXTS[n % len(TEXTS)]
    if hint is bool:
        return n % 2 == 0
    if hint is int:
        return (0, 7, 2**53 + 1, -1)[n % 4]
    if hint is datetime:
        return TIMES[n % len(TIMES)]
    if hint is date:
        return TIMES[n % len(TIMES)].date()
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        members = list(hint)
        return members[n % len(members)]
    if dataclasses.is_dataclass(hint):
        return _example(hint, n, depth + 1)  # type: ignore[arg-type]
    raise AssertionError(f"no example for {hint!r}: add one, and check snapshot_text encodes it as canonical does")


def _example(kind: type, n: int, depth: int = 0) -> object:
    return kind(**{name: _value(hint, n + i, depth) for i, (name, hint) in enumerate(_hints(kind).items())})


def test_every_kind_a_snapshot_keeps_is_written_as_canonical_wrote_it() -> None:
    for kind in SNAPSHOT_KINDS:
        for n in range(12):
            value = _example(kind, n)
            assert snapshot_text(value) == canonical(plain(value)), (kind.__name__, n)
            assert content_hash(snapshot_text(value)) == content_hash(canonical(plain(value)))
            assert snapshot_text(plain(value)) == canonical(plain(value))  # a plain form already, as tests stage


def test_no_dataclass_a_snapshot_reaches_has_a_field_orjson_would_write_differently() -> None:
    # orjson leaves out a dataclass field named with a leading underscore, and writes some floats unlike json:
    # either would change an object's text, and so its hash, on the scan after an upgrade.
    reached = _reachable(SNAPSHOT_KINDS)
    assert len(reached) > len(SNAPSHOT_KINDS)  # the walk reached the DNS facts, forwards, grants...
    for kind in reached:
        for name, hint in _hints(kind).items():
            assert not name.startswith("_"), f"{kind.__name__}.{name}"
            assert float not in _leaves(hint), f"{kind.__name__}.{name} is a float"


def test_what_orjson_refuses_or_does_not_know_is_written_as_canonical_wrote_it() -> None:
    values = [
        {"big": 2**70, "list": [1, 2]},  # past 64 bits: orjson refuses it
        {"set": frozenset({"b", "a", "c"}), "path": Path("/tmp/x"), "when": TIMES[2], "day": date(2026, 1, 2)},
        types.MappingProxyType({"z": 1, "a": (1, "x")}),
        {3: "an int key", "a": "str key"},  # a key that is not a string
    ]
    for value in values:
        assert snapshot_text(value) == canonical(plain(value))
