"""Every way --adapter can be wrong ends in one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.adapter_loading import AdapterLoadError, check_adapter, load_adapter

MISSING_OPERATION_ADAPTER = """
from reference_impl.adapter import ReferenceAdapter

class _NoFinalize:
    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        if name == "finalize":
            raise AttributeError(name)
        return getattr(self._store, name)

    async def aclose(self):
        await self._store.aclose()

class NoFinalizeAdapter(ReferenceAdapter):
    async def connect(self, dsn, *, clock=None):
        return _NoFinalize(await super().connect(dsn, clock=clock))

adapter = NoFinalizeAdapter(name="no-finalize")
"""

RAISING_FACTORY = """
def make():
    raise RuntimeError("no credentials configured")
"""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_such_module_xyz:adapter", "module 'no_such_module_xyz' cannot be imported"),
        ("harness.contract:no_such_attr", "has no attribute 'no_such_attr'"),
        ("harness.contract:MESSAGE_STATUSES", "is not an Adapter (missing name"),
        ("not-registered", "no adapter registered under that name"),
        ("harness.contract", "no adapter registered under that name"),
        ("raising_factory:make", "calling make() to build the adapter raised RuntimeError"),
    ],
)
def test_bad_spec_is_one_clear_line(pytester: pytest.Pytester, spec: str, expected: str):
    pytester.makepyfile(raising_factory=RAISING_FACTORY)
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess("--pyargs", "scenarios", "--adapter", spec)
    assert result.ret == 2
    error_lines = [line for line in result.stderr.lines if line.strip()]
    assert len(error_lines) == 1, result.stderr.str()
    assert expected in error_lines[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_cli_reports_bad_adapter_with_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--adapter", "no_such_module_xyz:adapter"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "turnproof: --adapter 'no_such_module_xyz:adapter': module 'no_such_module_xyz' cannot "
        "be imported (No module named 'no_such_module_xyz'); check the spelling and that its "
        "package is installed in this environment"
    ]


def test_missing_operation_stops_the_run_before_any_scenario(pytester, postgres_server):
    pytester.makepyfile(no_finalize=MISSING_OPERATION_ADAPTER)
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "scenarios",
        "--adapter",
        "no_finalize:adapter",
        "--pg-dsn",
        postgres_server.admin_dsn,
        "-p",
        "no:cacheprovider",
    )
    assert result.ret == 2
    result.stdout.fnmatch_lines(
        [
            "*adapter 'no-finalize': connect() returned _NoFinalize, which lacks the async "
            "operation(s) finalize; implement them*"
        ]
    )
    assert "passed" not in result.stdout.str()


def test_reference_loads_by_registered_name_and_by_path():
    by_name = load_adapter("reference")
    by_path = load_adapter("reference_impl:adapter")
    assert by_name is by_path
    assert by_name.name == "reference"


def test_class_is_instantiated():
    adapter = load_adapter("reference_impl:ReferenceAdapter")
    assert adapter.name == "reference"


def test_unknown_capability_is_rejected():
    class Odd:
        name = "odd"
        capabilities = frozenset({"turns", "telepathy"})

        async def install(self, dsn):
            pass

        async def connect(self, dsn, *, clock=None):
            pass

    with pytest.raises(AdapterLoadError, match="unknown capabilities \\['telepathy'\\]"):
        check_adapter(Odd(), "odd:adapter")
