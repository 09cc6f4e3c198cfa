"""The README's table of settings, written from config/defaults.toml so the two cannot drift.

Each key's default comes from the file (read with tomllib), its meaning from
the comment on its line. ``python -m tests.support.settings_table`` rewrites
the table in README.md; tests/test_deployment.py fails while they differ.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ROOT / "config" / "defaults.toml"
README = ROOT / "README.md"
START = "<!-- settings table: written by `python -m tests.support.settings_table` from config/defaults.toml -->"
END = "<!-- end of settings table -->"
# A key, its value (no "#" in any of them), and the comment that follows on the same line.
_LINE = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)\s*=\s*(?P<value>[^#]*?)\s*(?:#\s*(?P<meaning>.*))?$")


def rows(defaults: Path = DEFAULTS) -> list[tuple[str, str, str]]:
    """(name, default, meaning) of every key, in the file's order."""
    values = tomllib.loads(defaults.read_text(encoding="utf-8"))
    found = []
    for line in defaults.read_text(encoding="utf-8").splitlines():
        match = _LINE.match(line)
        if match:
            found.append((match["name"], _shown(values[match["name"]]), (match["meaning"] or "").strip()))
    return found


def _shown(value: object) -> str:
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def table(defaults: Path = DEFAULTS) -> str:
    lines = [START, "", "| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {default} | {meaning.replace('|', '/')} |" for name, default, meaning in rows(defaults)]
    return "\n".join([*lines, "", END])


def readme_table(readme: Path = README) -> str:
    text = readme.read_text(encoding="utf-8")
    return text[text.index(START):text.index(END) + len(END)]


def write_readme(readme: Path = README) -> None:
    text = readme.read_text(encoding="utf-8")
    readme.write_text(text.replace(readme_table(readme), table()), encoding="utf-8")


if __name__ == "__main__":
    write_readme()
    print(f"{README}: settings table written from {DEFAULTS}")
