"""`turnproof bench writer` runs both arms in one run and counts writes on the wire."""

from __future__ import annotations

import re

from harness.bench import stream_writer


def test_the_writer_benchmark_counts_every_write_without_debounce(postgres_server, capsys):
    deltas = 20
    argv = ["--deltas", str(deltas), "--spacing-ms", "1", "--dsn", postgres_server.admin_dsn]
    assert stream_writer.main(argv) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\s+([\d.]+) ms\s+(\d+)\s", out, re.MULTILINE))
    assert set(rows) == {"33", "0"}, out
    assert int(rows["0"]) == deltas, f"debounce 0 writes every delta once:\n{out}"
    assert 1 <= int(rows["33"]) <= deltas, out  # how few depends on timing: not asserted
    assert "less often than debounce 0" in out
