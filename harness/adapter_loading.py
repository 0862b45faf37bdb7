"""Finding the implementation under test from an import path or an entry-point name.

Every way this can go wrong ends in one `AdapterLoadError` line that says what
was wrong and what to do, because the user's first contact with the harness
is usually a typo in `--adapter`.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points

from harness.contract import STORE_OPERATIONS, Adapter, TurnStore
from harness.errors import UsageError
from harness.requirements import CAPABILITIES

ENTRY_POINT_GROUP = "turnproof.adapters"
DEFAULT_ADAPTER = "reference"


class AdapterLoadError(UsageError):
    """The adapter spec does not lead to a usable Adapter: the user's set-up, exit 2."""


def import_path(spec: str | None) -> str:
    """The `package.module:attr` a spec names: itself, or a registered name resolved."""
    spec = (spec or DEFAULT_ADAPTER).strip()
    return _resolve_entry_point(spec) if ":" not in spec else spec


def load_adapter(spec: str | None) -> Adapter:
    """Resolve `package.module:attr` or a registered name to a checked Adapter."""
    spec = (spec or DEFAULT_ADAPTER).strip()
    target = import_path(spec)
    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise AdapterLoadError(
            f"--adapter {spec!r}: expected 'package.module:attribute' or one of the registered "
            f"names ({_registered_names()})"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise AdapterLoadError(
            f"--adapter {spec!r}: module {module_name!r} cannot be imported ({exc}); "
            "check the spelling and that its package is installed in this environment"
        ) from None
    except Exception as exc:
        raise AdapterLoadError(
            f"--adapter {spec!r}: importing {module_name!r} failed with {type(exc).__name__}: {exc}"
        ) from None
    obj: object = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise AdapterLoadError(
                f"--adapter {spec!r}: module {module_name!r} has no attribute {attr_path!r}"
            )
        obj = getattr(obj, part)
    if callable(obj) and not _looks_like_adapter(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise AdapterLoadError(
                f"--adapter {spec!r}: calling {attr_path}() to build the adapter raised "
                f"{type(exc).__name__}: {exc}"
            ) from None
    check_adapter(obj, spec)
    return obj  # type: ignore[return-value]


def check_adapter(obj: object, spec: str) -> None:
    """Reject anything that is not an Adapter, naming the first thing missing."""
    missing = [n for n in ("name", "capabilities", "install", "connect") if not hasattr(obj, n)]
    if missing:
        raise AdapterLoadError(
            f"--adapter {spec!r}: {type(obj).__name__} is not an Adapter "
            f"(missing {', '.join(missing)}); see harness.Adapter in the README"
        )
    for name in ("install", "connect"):
        if not inspect.iscoroutinefunction(getattr(obj, name)):
            raise AdapterLoadError(
                f"--adapter {spec!r}: {name} must be an 'async def' method (see harness.Adapter)"
            )
    capabilities = obj.capabilities  # type: ignore[attr-defined]
    if not isinstance(capabilities, (set, frozenset)) or not capabilities:
        raise AdapterLoadError(
            f"--adapter {spec!r}: capabilities must be a non-empty frozenset of names "
            f"from: {', '.join(sorted(CAPABILITIES))}"
        )
    unknown = set(capabilities) - CAPABILITIES
    if unknown:
        raise AdapterLoadError(
            f"--adapter {spec!r}: unknown capabilities {sorted(unknown)}; "
            f"known: {', '.join(sorted(CAPABILITIES))}"
        )


def missing_operations(store: object) -> list[str]:
    """Contract operations a connected store lacks or does not implement as coroutines."""
    names = [*STORE_OPERATIONS, "aclose"]
    return [n for n in names if not inspect.iscoroutinefunction(getattr(store, n, None))]


def assert_store(store: object, adapter_name: str) -> TurnStore:
    """Fail with the missing operation names, not with an AttributeError mid-scenario."""
    missing = missing_operations(store)
    if missing:
        raise AdapterLoadError(
            f"adapter {adapter_name!r}: connect() returned {type(store).__name__}, which lacks "
            f"the async operation(s) {', '.join(missing)}; implement them (see harness.TurnStore)"
        )
    return store  # type: ignore[return-value]


def _looks_like_adapter(obj: object) -> bool:
    return hasattr(obj, "connect") and hasattr(obj, "install") and not inspect.isclass(obj)


def _resolve_entry_point(name: str) -> str:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.value
    raise AdapterLoadError(
        f"--adapter {name!r}: no adapter registered under that name "
        f"(registered: {_registered_names()}); give an import path 'package.module:attribute' "
        f"or register an entry point in the group {ENTRY_POINT_GROUP!r}"
    )


def _registered_names() -> str:
    return ", ".join(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))) or "none"
