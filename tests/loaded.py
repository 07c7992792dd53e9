"""Run a command while CPU hogs keep every core busy: `python tests/loaded.py [--runs N] -- CMD...`.

A loaded host is normal in CI and production; a suite that passes only on an idle machine hides
timing defects. One busy-looping process per core (os.cpu_count()) runs at normal priority beside
the command for its whole duration; the hogs are stopped by PID whatever happens. With --runs N
the command runs N times in a row and the first failure stops the series.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HOG = "while True: pass"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 2)]
    print(f"loaded: {len(hogs)} CPU hogs running (pids {' '.join(str(h.pid) for h in hogs)})", flush=True)
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            rc = subprocess.call(command)
            print(f"loaded: run {run} of {args.runs} exited {rc} after {time.monotonic() - started:.0f} s", flush=True)
            if rc != 0:
                return rc
        return 0
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
