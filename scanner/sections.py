"""The config file's TOML and its [store] and [schedule] tables, read and validated without pydantic.

One definition for two readers: the full loader (scanner/config.py) validates these two tables with the
functions here, and ``mailwarden status``, which reads nothing else, calls them directly, so it starts
without pydantic, SQLAlchemy or the other tables' models.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote
from zoneinfo import ZoneInfo

from scanner.errors import ConfigError

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger


class TableProblem(ValueError):
    """What is wrong in one of these tables: the key (None: the table as a whole) and the problem."""

    def __init__(self, key: str | None, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem

    def where(self, table: str) -> str:
        """The key path the user edits, such as ``schedule.lease_ttl``."""
        return f"{table}.{self.key}" if self.key else table


# the file


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; raises ConfigError naming the file (and the key, where TOML says which line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = _toml_where(text, str(exc))
        line = _TOML_LINE.search(str(exc))
        value = text.splitlines()[int(line.group(1)) - 1].partition("=")[2] if line and where else ""
        if re.match(r"\s*\d{4}-\d{1,2}-\d{1,2}", value):
            raise ConfigError(f"{path}: {where}not a valid date (YYYY-MM-DD, such as 2027-01-31): "
                              f"{value.strip()[:40]!r} ({exc})") from None
        raise ConfigError(f"{path}: {where}not valid TOML: {exc}") from None
    nul = _nul_key(data)
    if nul:
        raise ConfigError(f"{path}: {nul}: holds a NUL byte; no name, address or path has one")
    return data


_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")
_TOML_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _toml_where(text: str, message: str) -> str:
    """``key: `` for the key on the line a TOML error names (a bad date or value), with its table; else ""."""
    found = _TOML_LINE.search(message)
    if found is None:
        return ""
    lines = text.splitlines()
    number = int(found.group(1))
    if not 0 < number <= len(lines):
        return ""
    key = _TOML_KEY.match(lines[number - 1])
    if key is None:
        return ""
    table = next((m.group(1) for line in reversed(lines[: number - 1]) if (m := _TOML_TABLE.match(line))), "")
    name = key.group(1).strip()
    return f"{table}.{name}: " if table else f"{name}: "


def _nul_key(value: object, where: str = "") -> str:
    """The key path of the first string holding a NUL byte, or ""."""
    if isinstance(value, str):
        return where or "(top level)" if "\x00" in value else ""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_key(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_key(item, f"{where}[{index}]")
            if found:
                return found
    return ""


# [store]


_URL_SCHEME = re.compile(r"([\w+]+)://")
_URL_PORT = re.compile(r"[\w+]+://(?:[^:/]*(?::[^@]*)?@)?(?:\[[^/?]+\]|[^/:?]+)?(?::(?P<port>[^/?]*))?")
"""A database URL's port, split off as SQLAlchemy's URL grammar does (user and password up to the ``@``, an IPv6
host in brackets), so a port the store could not open with is refused here, as a config problem."""
_SQLITE_URL = re.compile(r"(sqlite(?:\+\w+)?):///([^?]*)(\?.*)?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where runs, snapshots and findings are kept."""

    url: str = "sqlite:///mailwarden.db"


def store_config(table: object) -> StoreConfig:
    """The [store] table validated; raises TableProblem."""
    values = _table(table, StoreConfig.__slots__)
    if "url" not in values:
        return StoreConfig()
    url = values["url"]
    if not isinstance(url, str):
        raise TableProblem("url", "Input should be a valid string")
    scheme = _URL_SCHEME.match(url)
    if scheme is None:
        # Never echo the URL: it may hold a password.
        raise TableProblem("url", "not a database URL: use sqlite:///PATH or postgresql://HOST/DATABASE")
    dialect = scheme.group(1).partition("+")[0]
    if dialect not in ("sqlite", "postgresql"):
        raise TableProblem("url", f"the store works on SQLite and PostgreSQL, not {dialect!r}")
    port = _URL_PORT.match(url).group("port")  # type: ignore[union-attr]  # it matches wherever the scheme does
    if port and not port.isdigit():
        raise TableProblem("url", "not a database URL: its port is not a number (give sqlite:///PATH or "
                                  "postgresql://USER:PASSWORD@HOST:PORT/DATABASE)")
    return StoreConfig(url)


def sqlite_path(url: str) -> Path | None:
    """The file a plain ``sqlite:///PATH`` URL names; None for a store in memory, a URI filename, a URL with
    options, or another database."""
    found = _SQLITE_URL.fullmatch(url)
    if found is None or found.group(3):
        return None
    database = unquote(found.group(2))
    return None if database in ("", ":memory:") or database.startswith("file:") else Path(database)


def store_url_from(url: str, base: Path) -> str:
    """A store URL with a relative SQLite path made relative to ``base`` (the config file's directory), as every
    other path in the config is; in-memory, absolute and PostgreSQL URLs are unchanged."""
    found = _SQLITE_URL.fullmatch(url)
    if found is None:
        return url  # PostgreSQL, or a URL the store itself explains when it opens
    database = unquote(found.group(2))
    if database in ("", ":memory:") or database.startswith("file:") or Path(database).is_absolute():
        return url
    return f"{found.group(1)}:///{quote(str(base / database), safe=' +/')}{found.group(3) or ''}"


# [schedule]


def _cron_trigger(spec: str, timezone: str) -> CronTrigger:
    """An APScheduler cron trigger from 5 fields (minute hour day month weekday) or 6 (seconds first)."""
    from apscheduler.triggers.cron import CronTrigger

    fields = spec.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(spec, timezone=timezone)
    if len(fields) == 6:
        second, minute, hour, day, month, weekday = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=weekday,
                           timezone=timezone)
    raise ValueError(f"{spec!r} is not a cron expression: give 5 fields (minute hour day month weekday) or 6 "
                     "(seconds first)")


JOBS = ("scan", "report", "dmarc_import")
"""The scheduled jobs, each with a cron expression in [schedule]."""


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """When ``mailwarden serve`` scans and emails the report (cron expressions in ``timezone``)."""

    scan: str = "0 6 * * *"  # empty: no scheduled scan
    report: str = "0 7 * * MON"  # empty: no scheduled report (needs [email] otherwise)
    dmarc_import: str = "15 * * * *"  # importing DMARC aggregate reports (when [dmarc_reports] is set)
    timezone: str = "UTC"
    misfire_grace_time: int = 3600  # seconds a missed run may start late
    coalesce: bool = True  # several missed runs start once
    out: Path = Path("mailwarden-out")  # where each scheduled scan writes its outputs (relative to the config file)
    lease_ttl: float = 600.0  # seconds without a heartbeat after which a scan is orphaned

    def trigger(self, job: str) -> CronTrigger | None:
        """The APScheduler trigger of a job (``scan`` or ``report``), or None when it is not scheduled."""
        spec = getattr(self, job).strip()
        return _cron_trigger(spec, self.timezone) if spec else None


_DEFAULT_CRON = {job: getattr(ScheduleConfig(), job) for job in JOBS}
"""The default expressions: valid in any time zone (a test parses them), so a config that keeps them needs no
CronTrigger (APScheduler takes a third of `mailwarden status`'s start to import)."""

_UNQUOTED = " (written without quotes; no conversion is made)"
"""Added to a wrong type's message, in the words the full loader uses for the other tables."""


def schedule_config(table: object) -> ScheduleConfig:
    """The [schedule] table validated, its time zone and every cron expression included; raises TableProblem."""
    values = _table(table, ScheduleConfig.__slots__)
    for key in (*JOBS, "timezone"):
        if key in values and not isinstance(values[key], str):
            raise TableProblem(key, "Input should be a valid string")
    if "misfire_grace_time" in values:
        values["misfire_grace_time"] = _whole(values["misfire_grace_time"], "misfire_grace_time", 1, 7 * 86400)
    if "coalesce" in values and not isinstance(values["coalesce"], bool):
        raise TableProblem("coalesce", "Input should be a valid boolean" + _UNQUOTED)
    if "out" in values:
        if not isinstance(values["out"], str):
            raise TableProblem("out", "Input is not a valid path")
        values["out"] = Path(values["out"])
    if "lease_ttl" in values:
        values["lease_ttl"] = _seconds(values["lease_ttl"], "lease_ttl", 86400)
    schedule = ScheduleConfig(**values)
    try:
        ZoneInfo(schedule.timezone)
    except (KeyError, ValueError, OSError):
        raise TableProblem(None, f"timezone: {schedule.timezone!r} is not an IANA time zone such as "
                                 "'Europe/Berlin'") from None
    for job in JOBS:
        spec = getattr(schedule, job)
        if spec.strip() and spec != _DEFAULT_CRON[job]:
            try:
                _cron_trigger(spec, schedule.timezone)
            except ValueError as exc:
                raise TableProblem(None, f"{job}: {exc}") from None
    return schedule


def _whole(value: object, key: str, low: int, high: int) -> int:
    """A whole number from low to high; TOML gives numbers typed, so text (or true) is refused, never converted."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TableProblem(key, "Input should be a valid integer" + _UNQUOTED)
    if value < low:
        raise TableProblem(key, f"Input should be greater than or equal to {low}")
    if value > high:
        raise TableProblem(key, f"Input should be less than or equal to {high}")
    return value


def _seconds(value: object, key: str, high: int) -> float:
    """A finite number of seconds above 0 and at most ``high``, typed as TOML gives it."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TableProblem(key, "Input should be a valid number" + _UNQUOTED)
    if not math.isfinite(value):
        raise TableProblem(key, "Input should be a finite number")
    if value <= 0:
        raise TableProblem(key, "Input should be greater than 0")
    if value > high:
        raise TableProblem(key, f"Input should be less than or equal to {high}")
    return float(value)


def _table(value: object, keys: tuple[str, ...]) -> dict[str, Any]:
    """A table's entries, refusing a value that is not a table and any key it does not define."""
    if not isinstance(value, dict):
        raise TableProblem(None, "Input should be a valid dictionary")
    for key in value:
        if key not in keys:
            raise TableProblem(str(key), "unknown key")
    return dict(value)


# what status reads


@dataclass(frozen=True, slots=True)
class Sections:
    """The [store] and [schedule] tables of one config file, validated, the store's SQLite path made absolute."""

    source: Path
    store: StoreConfig
    schedule: ScheduleConfig


def load_sections(path: Path) -> Sections:
    """Read a config file's [store] and [schedule] tables only; the other tables are not looked at.

    A problem in these tables is the error the full loader gives for it, in the same words."""
    data = read_toml(path)
    try:
        store = store_config(data.get("store", {}))
    except TableProblem as problem:
        raise ConfigError(f"{path}: {problem.where('store')}: {problem.problem}") from None
    try:
        schedule = schedule_config(data.get("schedule", {}))
    except TableProblem as problem:
        raise ConfigError(f"{path}: {problem.where('schedule')}: {problem.problem}") from None
    return Sections(path.resolve(), StoreConfig(store_url_from(store.url, path.resolve().parent)), schedule)
