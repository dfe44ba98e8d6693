"""The instant engine for the benchmark: `python -m bench._engine [engine_stub flags]`.

This is `python -m engine_stub --instant --no-request-lines`: engine_stub without the `request`
JSON line it writes to stdout for every request for the tests' sake (a json.dumps, a write and a
flush per call). Those lines would charge the stub's test interface to the bridge and fill a
pipe nobody reads. Its `ready` line is printed as usual.
"""

from __future__ import annotations

import sys

from bench.procs import die_with_parent
from engine_stub.__main__ import main

if __name__ == "__main__":
    die_with_parent()
    sys.exit(main(["--instant", "--no-request-lines", "--log-level", "WARNING", *sys.argv[1:]]))
