"""The method list has one source, the registry (gnlorp/methods/__init__.py, in its row order): every user-facing text
that lists the methods either is generated from it (cli.USAGE, --help's config groups) or is checked here against it
(README.md's tables, the comment in gnlorp/conf/config.yaml). Adding a method without updating them fails here."""

from __future__ import annotations

import re
from pathlib import Path

from gnlorp.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]


def _names(text: str) -> list[str]:
    return re.findall(r"`([a-z0-9_]+)`", text)


def test_config_yaml_comment_lists_the_registry_in_its_order():
    (line,) = [ln for ln in (ROOT / "gnlorp/conf/config.yaml").read_text().splitlines() if "- method:" in ln]
    listed = line.split("#", 1)[1].split("(")[0]
    assert [n.strip() for n in listed.split(",")] == list(METHODS), line


def test_readme_config_group_row_lists_the_registry():
    readme = (ROOT / "README.md").read_text()
    (row,) = [ln for ln in readme.splitlines() if ln.startswith("| `method` |")]
    assert _names(row.split("|")[2]) == list(METHODS), row


def test_readme_method_table_has_one_row_per_registered_method_in_order():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    assert [_names(r.split("|")[1])[0] for r in rows] == list(METHODS), rows
    for m in METHODS:  # each row points to the method's module and YAML
        assert f"gnlorp/methods/{m}.py" in section and f"conf/method/{m}.yaml" in section, m


def test_cli_usage_and_help_name_every_registered_method():
    from gnlorp.cli import USAGE
    from gnlorp.config_groups import group_options

    listed = re.findall(r"\(([a-z0-9_]+)\)", USAGE.split("\n\n", 1)[0].replace("\n", " "))
    assert listed == list(METHODS), USAGE.split("\n\n", 1)[0]
    assert sorted(group_options("method")) == sorted(METHODS)  # one YAML per registered method, none other


def test_the_readme_is_a_guide_with_the_layout_near_the_top():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 350, f"README.md has {len(lines)} lines; measured results belong in results/README.md"
    assert lines.index("## Layout") < len(lines) / 3
