#!/usr/bin/env python3
"""Spawn N idle `sleep` processes for Quarry's scale benchmark, hold them, and clean up.

Usage: spawn_idle.py COUNT READY_FILE [SLEEP_SECONDS]

The spawner makes itself a process-group leader, so every child sits in a group
whose id is the spawner's pid (the caller can `kill -KILL -- -PID` as a last
resort). It starts the children with posix_spawn (vfork-based, a few hundred
microseconds each), writes the number it started to READY_FILE, and then waits.
On SIGTERM/SIGINT/SIGHUP it SIGKILLs and reaps every child before exiting, so no
zombies or orphans are left behind. Each child is `sleep SLEEP_SECONDS` (default
600), so even if everything else fails they end on their own.
"""
import os
import signal
import sys
import time


def main() -> int:
    count = int(sys.argv[1])
    ready = sys.argv[2]
    seconds = sys.argv[3] if len(sys.argv) > 3 else "600"

    os.setpgid(0, 0)
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    sleep_bin = "/bin/sleep" if os.path.exists("/bin/sleep") else "/usr/bin/sleep"
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
    ]
    reset = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    pids = []
    error = ""
    for _ in range(count):
        if stop:
            break
        try:
            pids.append(
                os.posix_spawn(
                    sleep_bin,
                    ["sleep", seconds],
                    {},
                    file_actions=actions,
                    setsigdef=reset,
                )
            )
        except OSError as e:  # EAGAIN: pid_max / RLIMIT_NPROC reached
            error = str(e)
            break
    if error:
        print(f"spawn_idle: stopped after {len(pids)} processes: {error}", file=sys.stderr)

    tmp = ready + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{len(pids)}\n")
    os.rename(tmp, ready)

    while not stop:
        time.sleep(0.2)

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
