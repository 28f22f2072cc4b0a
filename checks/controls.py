"""The control catalogue: which checks evidence which control of SCuBA, CIS, NIST and CISA BOD 18-01.

The catalogue is data beside the checks (``checks/frameworks/*.toml``, package data); a third-party
check package adds mappings through the ``mailwarden.controls`` entry-point group, whose object is a
callable returning the paths (or importlib resources) of its own TOML files. It is the one source of a
check's framework references: ``references(meta, catalogue)`` joins them to the check's RFC sections.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from checks.registry import CheckMeta, RegistryError
from scanner.errors import MailwardenError

GROUP = "mailwarden.controls"
COVERAGE = ("full", "partial")


class UnknownFramework(MailwardenError):
    """A framework id that the catalogue does not hold."""


@dataclass(frozen=True, slots=True)
class Control:
    """One control of a framework and the checks whose findings evidence it."""

    framework: str
    id: str
    title: str
    checks: tuple[str, ...]
    coverage: str  # full: the checks decide the control; partial: they decide part of it (see note)
    note: str = ""


@dataclass(frozen=True, slots=True)
class Framework:
    """A versioned framework (baseline, benchmark, directive) and its controls that mail checks evidence."""

    id: str
    name: str
    version: str
    reference: str  # how a check's references name it: "SCuBA", "CIS Microsoft 365 v7.0"
    source: str
    controls: tuple[Control, ...]
    providers: tuple[str, ...] = ()  # the providers whose tenants it speaks to; empty: every tenant


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Every framework, in a stable order, with a lookup from check id to the controls it evidences."""

    frameworks: tuple[Framework, ...]

    def framework(self, framework_id: str) -> Framework:
        """The framework with this id; a ``RegistryError`` naming the known ids otherwise."""
        for framework in self.frameworks:
            if framework.id == framework_id:
                return framework
        known = ", ".join(f.id for f in self.frameworks)
        raise UnknownFramework(f"unknown framework {framework_id!r}: the catalogue has {known}")

    def controls_of(self, check_id: str) -> list[tuple[Framework, Control]]:
        """The controls a check's findings evidence, framework by framework."""
        return [(f, c) for f in self.frameworks for c in f.controls if check_id in c.checks]


def references(meta: CheckMeta, catalogue: Catalogue) -> tuple[str, ...]:
    """A check's references: its own (RFC sections, papers) and then the controls the catalogue maps it to."""
    mapped = tuple(dict.fromkeys(f"{f.reference} {c.id}" for f, c in catalogue.controls_of(meta.id)))
    return meta.references + mapped


def bundled_files() -> list[Traversable]:
    """The catalogue files shipped with mailwarden, by name."""
    folder = resources.files("checks") / "frameworks"
    return sorted((entry for entry in folder.iterdir() if entry.name.endswith(".toml")), key=lambda e: e.name)


def load_catalogue(
    known_checks: Iterable[str] | None = None,
    entries: Iterable[EntryPoint] | None = None,
    files: Sequence[Traversable | Path] | None = None,
) -> Catalogue:
    """Read the bundled catalogue and every plug-in's mappings; with ``known_checks``, refuse unknown check ids.

    A plug-in file either defines a framework of its own (``[framework]`` and ``[[controls]]``) or adds
    checks to existing controls (``[[mappings]]`` with ``framework``, ``control``, ``checks``, ``coverage``).
    """
    sources: list[tuple[str, Traversable | Path]] = [("mailwarden", f) for f in (files or bundled_files())]
    for entry in entry_points(group=GROUP) if entries is None else entries:
        sources.extend((_package(entry), path) for path in _plugin_files(entry))
    frameworks: dict[str, dict[str, Any]] = {}
    mappings: list[tuple[str, str, Mapping[str, Any]]] = []
    for package, source in sources:
        where = f"{source.name} (from package {package!r})"
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RegistryError(f"control catalogue {where} cannot be read: {exc}") from exc
        if "framework" in data:
            framework = _framework(data, where)
            if framework["id"] in frameworks:
                raise RegistryError(f"control catalogue {where}: framework {framework['id']!r} is defined twice")
            frameworks[framework["id"]] = framework
        for mapping in data.get("mappings", ()):
            mappings.append((where, str(mapping.get("framework", "")), mapping))
    for where, framework_id, mapping in mappings:
        _add_mapping(frameworks, framework_id, mapping, where)
    catalogue = Catalogue(tuple(
        Framework(f["id"], f["name"], f["version"], f["reference"], f["source"],
                  tuple(Control(f["id"], c["id"], c["title"], tuple(c["checks"]), c["coverage"], c["note"])
                        for c in f["controls"].values()),
                  f["providers"])
        for f in frameworks.values()
    ))
    if known_checks is not None:
        known = set(known_checks)
        for framework in catalogue.frameworks:
            for control in framework.controls:
                for check_id in control.checks:
                    if check_id not in known:
                        raise RegistryError(
                            f"control {control.id} of framework {framework.id!r} names check {check_id!r}, "
                            "which no installed package registers"
                        )
    return catalogue


def _package(entry: EntryPoint) -> str:
    return entry.dist.name if entry.dist is not None else entry.value.partition(":")[0]


def _plugin_files(entry: EntryPoint) -> list[Traversable | Path]:
    try:
        provider: Callable[[], Iterable[Traversable | Path]] = entry.load()
        return list(provider())
    except Exception as exc:  # a broken plug-in is the user's to see, with its package
        raise RegistryError(
            f"control mappings {entry.name!r} from package {_package(entry)!r} cannot be loaded ({entry.value}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _text(table: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = table.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise RegistryError(f"control catalogue {where}: {key!r} must be a non-empty string")
    return value.strip()


def _control(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    checks = table.get("checks")
    if not isinstance(checks, list) or not checks or not all(isinstance(c, str) and c for c in checks):
        raise RegistryError(f"control catalogue {where}: control {table.get('id')!r} needs a list of check ids")
    coverage = table.get("coverage")
    if coverage not in COVERAGE:
        raise RegistryError(
            f"control catalogue {where}: control {table.get('id')!r} has coverage {coverage!r}; use full or partial"
        )
    note = _text(table, "note", where, required=False)
    if coverage == "partial" and not note:
        raise RegistryError(f"control catalogue {where}: control {table.get('id')!r} is partial but says not why (note)")
    return {"id": _text(table, "id", where), "title": _text(table, "title", where), "checks": list(checks),
            "coverage": coverage, "note": note}


def _framework(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    head = data["framework"]
    if not isinstance(head, dict):
        raise RegistryError(f"control catalogue {where}: [framework] must be a table")
    controls: dict[str, dict[str, Any]] = {}
    for table in data.get("controls", ()):
        control = _control(table, where)
        if control["id"] in controls:
            raise RegistryError(f"control catalogue {where}: control {control['id']!r} is listed twice")
        controls[control["id"]] = control
    providers = head.get("providers", [])
    if not isinstance(providers, list) or not all(isinstance(p, str) and p for p in providers):
        raise RegistryError(f"control catalogue {where}: 'providers' must be a list of provider names")
    return {"id": _text(head, "id", where), "name": _text(head, "name", where), "providers": tuple(providers),
            "version": _text(head, "version", where), "reference": _text(head, "reference", where),
            "source": _text(head, "source", where, required=False), "controls": controls}


def _add_mapping(frameworks: dict[str, dict[str, Any]], framework_id: str, mapping: Mapping[str, Any],
                 where: str) -> None:
    framework = frameworks.get(framework_id)
    if framework is None:
        raise RegistryError(f"control catalogue {where}: a mapping names unknown framework {framework_id!r}")
    control_id = _text(mapping, "control", where)
    existing = framework["controls"].get(control_id)
    if existing is None:
        framework["controls"][control_id] = _control({**mapping, "id": control_id}, where)
        return
    added = _control({**existing, **mapping, "id": control_id, "title": existing["title"]}, where)
    existing["checks"] = list(dict.fromkeys([*existing["checks"], *added["checks"]]))
    if added["coverage"] == "full":  # the plug-in's checks complete what the others leave out
        existing["coverage"], existing["note"] = "full", ""
