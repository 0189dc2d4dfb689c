"""``python -m methods``: every registered method, whether it can run here, and if not, why."""

from __future__ import annotations

import argparse
import json

from methods.registry import get_method, method_names


def availability() -> list[dict]:
    rows = []
    for name in method_names():
        m = get_method(name)
        unmet = m.unmet()
        rows.append(
            {
                "method": name,
                "available": not unmet,
                "reason": "; ".join(unmet),
                "world_size": m.world_size,
                "summary": m.summary,
            }
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m methods", description=__doc__)
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)
    rows = availability()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max(len(r["method"]) for r in rows)
    for r in rows:
        status = "available" if r["available"] else "unavailable: " + r["reason"]
        print(f"{r['method']:<{w}}  {status}\n{'':<{w}}  {r['summary']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
