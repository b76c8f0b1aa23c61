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


def _rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for ln in markdown.splitlines():
        if ln.startswith("| ") and not ln.startswith("|---"):
            cells = [c.strip() for c in ln.strip("|").split("|")]
            rows.setdefault(cells[0], cells)
    return rows


def test_readme_headline_tables_are_the_generated_tables_rows():
    """README's headline rows are copies of the ours rows of results/tables/ (make tables): a rerun that changes a
    cell fails here until the README is updated."""
    readme = (ROOT / "README.md").read_text().split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    readme, differences = readme.split("| Difference |", 1)
    glue_part, c4_part = readme.split("glue_minilm.md", 1)[1].split("c4_other-sizes.md", 1)
    for part, table, methods in ((glue_part, "glue_minilm.md", 4), (c4_part, "c4_other-sizes.md", 6)):
        generated = {k: v for k, v in _rows((ROOT / "results/tables" / table).read_text()).items()}
        ours = [ln for ln in (ROOT / "results/tables" / table).read_text().splitlines() if "| ours (" in ln]
        ours = {c[0]: [c[0]] + c[2:] for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in ours)}
        headline = {k: v for k, v in _rows(part).items() if k not in ("Method",)}
        assert len(headline) == methods and set(headline) <= set(generated), (table, headline)
        for method, cells in headline.items():
            assert cells == ours[method], (table, method, cells, ours[method])
    # the verdict rows: a difference's headline interval, detectable size and verdict, copied from its table
    quoted = {k: v for k, v in _rows("| Difference |" + differences).items() if k != "Difference"}
    assert len(quoted) >= 6
    for table, column in (("glue_minilm_differences.md", "avg above baseline"), ("c4_other-sizes_differences.md",
                                                                                   "llama_20m")):
        generated = _rows((ROOT / "results/tables" / table).read_text())
        header = generated["Difference"]
        for row, cells in quoted.items():
            if row in generated:
                want = [row] + [generated[row][header.index(c)] for c in (column, "detectable", "verdict")]
                assert cells == want, (table, row, cells, want)
    assert all(any(row in _rows((ROOT / "results/tables" / t).read_text()) for t in
                   ("glue_minilm_differences.md", "c4_other-sizes_differences.md")) for row in quoted), quoted


def test_the_readme_is_a_guide_with_the_layout_near_the_top():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 350, f"README.md has {len(lines)} lines; measured results belong in results/README.md"
    assert lines.index("## Layout") < len(lines) / 3
