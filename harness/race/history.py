"""What happened during a schedule: each operation as invoke / ok / fail / unknown.

Jepsen's vocabulary: an operation cut by a fault has an unknown outcome
(`unknown`), which checkers must accept either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class OperationRecord:
    actor: str
    operation: str
    arguments: dict[str, Any]
    invoked_at: float
    completed_at: float | None = None
    outcome: str = "invoke"  # then "ok", "fail" or "unknown"
    result: Any = None
    error: BaseException | None = None

    def describe(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.arguments.items())
        call = f"{self.actor}.{self.operation}({args})"
        if self.outcome == "ok":
            return f"{call} -> {_short(self.result)}"
        if self.outcome == "fail":
            return f"{call} raised {type(self.error).__name__}: {self.error}"
        return f"{call} [{self.outcome}]"


@dataclass
class History:
    operations: list[OperationRecord] = field(default_factory=list)

    def invoke(self, actor: str, operation: str, arguments: dict[str, Any]) -> OperationRecord:
        record = OperationRecord(actor, operation, dict(arguments), time.monotonic())
        self.operations.append(record)
        return record

    def of(self, actor: str) -> list[OperationRecord]:
        return [op for op in self.operations if op.actor == actor]

    def results(self, operation: str) -> list[Any]:
        return [
            op.result for op in self.operations if op.operation == operation and op.outcome == "ok"
        ]

    def errors(self, operation: str) -> list[BaseException]:
        return [
            op.error
            for op in self.operations
            if op.operation == operation and op.outcome == "fail" and op.error is not None
        ]


def complete(
    record: OperationRecord,
    *,
    result: Any = None,
    error: BaseException | None = None,
    unknown: bool = False,
) -> None:
    record.completed_at = time.monotonic()
    if unknown:
        record.outcome, record.error = "unknown", error
    elif error is not None:
        record.outcome, record.error = "fail", error
    else:
        record.outcome, record.result = "ok", result


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
