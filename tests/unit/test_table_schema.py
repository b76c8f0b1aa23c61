"""`make tables` beside a record of an older schema (schema 1 before run identities: no identity.settings, as in
results/glue_cpu_subsets/): the record is left out and named, and the tables stay what the other runs make;
its input errors are one `error:` line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gnlorp import tables

RESULTS = Path(__file__).resolve().parents[2] / "results"
OLDER = RESULTS / "glue_cpu_subsets" / "glue-cola-minilm-full-fp32-n2000-s0.json"  # CoLA, full fine-tuning


@pytest.mark.slow
def test_an_older_record_is_left_out_and_named_and_the_tables_stay_as_committed(tmp_path, capsys):
    res = tmp_path / "results"
    res.mkdir()
    for f in RESULTS.glob("*.json"):
        shutil.copy(f, res)
    shutil.copy(OLDER, res)
    tables.main(["--results", str(res), "--out", str(tmp_path / "out"), "--no-memory"])
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True) if not line.startswith("tables ["))
    assert err == (f"note: {res / OLDER.name}: an older record (written before run identities: no identity.settings), "
                   f"whose settings cannot be compared with the other runs of this table: rerun its config, or move "
                   f"the file out of results/; left out of glue_minilm.\n")
    named = f"- `{OLDER.stem}` ({OLDER.name}): an older record"
    for p in sorted((tmp_path / "out").glob("*.*")):
        if p.suffix not in (".md", ".tex") or p.name == "index.md":
            continue
        text = p.read_text()
        if p.name == "glue_minilm.md":  # the only change: the record named under "Left out"
            assert text.count(named) == 1
            text = "\n".join(line for line in text.splitlines() if not line.startswith(named)) + "\n"
        assert text == (RESULTS / "tables" / p.name).read_text(), p.name
    assert named in (tmp_path / "out" / "index.md").read_text()


@pytest.mark.parametrize("argv,fragment", [
    (["--results", "no-such-folder"], "--results 'no-such-folder' is not a folder"),
    (["--out", "/proc/gnlorp-nope/tables"], "/proc/gnlorp-nope"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_tables_command_refuses_in_one_line(argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    with pytest.raises(SystemExit) as stop:
        tables.main([*argv, "--no-memory"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
