"""The Python SDK against the protocol cases the terminal client and the
TypeScript SDK run too (clients/cases/protocol-cases.json): every case goes
through the SDK's own decisions (mcp_hub_client.protocol, which the client
uses). Prints one JSON line {"cases": N, "failures": [...]}; exits 1 on a
failure. Run by tests/sdk_python.rs (PYTHONPATH=clients/python/src).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from mcp_hub_client.models import Position
from mcp_hub_client.protocol import after_close, after_registration, answered_request, track

CASES = Path(__file__).resolve().parents[2] / "cases" / "protocol-cases.json"


def position(value: Any) -> Optional[Position]:
    return None if value is None else Position(value["offset"], value["epoch"])


def as_json(p: Optional[Position]) -> Any:
    return None if p is None else {"offset": p.offset, "epoch": p.epoch}


def run_resume(case: Dict[str, Any]) -> Any:
    recovered, p = after_registration(position(case["since"]), case["confirmed"])
    return {"recovered": recovered, "position": as_json(p)}


def run_track(case: Dict[str, Any]) -> Any:
    p, duplicate = track(position(case["known"]), case["frame"])
    return {"position": as_json(p), "duplicate": duplicate}


RUNS: Dict[str, Callable[[Dict[str, Any]], Any]] = {
    "close": lambda c: after_close(c["code"], c["can_renew_token"]),
    "resume": run_resume,
    "track": run_track,
    "answers": lambda c: answered_request(c["frame"]),
}


def main() -> int:
    every = json.loads(CASES.read_text(encoding="utf-8"))
    count, failures = 0, []  # type: int, List[str]
    for kind, run in RUNS.items():
        cases = every.get(kind) or []
        if not cases:
            failures.append(f"no {kind} cases")
        for case in cases:
            count += 1
            got = run(case)
            if got != case["expect"]:
                failures.append(f"{kind}: {case['name']}: expected {case['expect']!r}, got {got!r}")
    print(json.dumps({"cases": count, "failures": failures}))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
