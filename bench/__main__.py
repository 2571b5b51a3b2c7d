"""Runs every benchmark in turn and prints their tables."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

ORDER = ["gateway"]
# Modules that other benches use, not benches themselves.
HELPERS = ("loadgen", "factbook", "standin", "__main__")


def main() -> int:
    here = Path(__file__).parent
    found = [m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in HELPERS]
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    only = sys.argv[1:]
    for name in names:
        if only and name not in only:
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
