"""python -m bench: run the benchmark once and write bench/results/latest.json."""

from __future__ import annotations

import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main())
