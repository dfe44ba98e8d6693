"""The benchmark's former entry point: `python -m bench.run [flags]` is `python -m bench [flags]`."""

from __future__ import annotations

import sys

from bench.__main__ import main
from bench.procs import rss_kb

__all__ = ["main", "rss_kb"]

if __name__ == "__main__":
    sys.exit(main())
