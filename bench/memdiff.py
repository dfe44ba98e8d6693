"""What grew between two tracemalloc snapshots of the service (bench.soak's SOAK_TRACEMALLOC):

    .venv/bin/python -m bench.memdiff BEFORE.snap AFTER.snap [--top 15] [--by traceback]

Prints the total traced before and after, then the allocation sites whose size grew most, by
line (default) or by whole traceback (where a growing object was made, call chain included).
tracemalloc's own frames are left out.
"""

from __future__ import annotations

import argparse
import tracemalloc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--by", choices=("lineno", "traceback", "filename"), default="lineno")
    args = parser.parse_args()
    leave_out = [tracemalloc.Filter(False, tracemalloc.__file__),
                 tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]  # fmt: skip
    before = tracemalloc.Snapshot.load(args.before).filter_traces(leave_out)
    after = tracemalloc.Snapshot.load(args.after).filter_traces(leave_out)
    total = [sum(s.size for s in snap.statistics("filename")) for snap in (before, after)]
    print(f"traced: {total[0] / 1024:.1f} KiB -> {total[1] / 1024:.1f} KiB "
          f"({(total[1] - total[0]) / 1024:+.1f} KiB)")  # fmt: skip
    for stat in after.compare_to(before, args.by)[: args.top]:
        print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+8d} blocks  "
              f"now {stat.size / 1024:9.1f} KiB")  # fmt: skip
        frames = stat.traceback.format(most_recent_first=True)
        for line in frames if args.by == "traceback" else frames[:1]:
            print(f"      {line.strip()}")


if __name__ == "__main__":
    main()
