"""Where the bundled data is (default policy, sender catalogue, demo estate): cheap to import, so the command
line can name it when it defines its commands."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from scanner.errors import ConfigError


def _bundled() -> Path:
    """Where the bundled data is: the package ``scanner.bundled`` (the repository's config/), by importlib.resources."""
    try:
        found = resources.files("scanner.bundled")
    except ModuleNotFoundError:
        # A development checkout installed (pip install -e .) before scanner.bundled existed: its config/ is beside
        # the packages. An installed wheel always has scanner.bundled.
        return Path(__file__).resolve().parent.parent / "config"
    if not isinstance(found, Path):  # a zipped install: the demo copies directories, so it needs real files
        raise ConfigError(f"the bundled data ({found}) is not on the file system: install mailwarden unzipped")
    return found


BUNDLED = _bundled()
"""The bundled data directory: default policy, sender catalogue, demo estate."""
