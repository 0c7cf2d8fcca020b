"""A verifier worker: `python -m pipeline.verify.worker PARENT_PID`, JSON lines on stdin/stdout.

It dies with its parent: PR_SET_PDEATHSIG (Linux, kernel-enforced even while sympy holds the GIL in
a huge integer power) plus a thread that polls os.getppid() (other systems, and the race where the
parent died before prctl ran). Stdin closing also ends it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    die_with_parent(int(sys.argv[1]))
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    logging.disable(logging.WARNING)  # math-verify warns that its own timeouts are off: the pool's apply
    from . import mathcheck

    mathcheck.IN_WORKER = True
    import math_verify  # noqa: F401  (imported before "ready" so a check's time is the check's)

    proto.write(json.dumps({"ready": os.getpid()}).encode() + b"\n")
    for line in sys.stdin.buffer:
        req = json.loads(line)
        try:
            state = mathcheck.math_state(req["gold"], req["pred"])
        except Exception:  # a parser error on odd input is an answer, not a dead worker
            state = "unparsed"
        proto.write(json.dumps({"id": req["id"], "state": state}).encode() + b"\n")


if __name__ == "__main__":
    main()
