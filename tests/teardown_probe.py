"""Run by tests/test_teardown.py under torchrun: train, then list the threads left.

After train returns (it destroys its process group), no gloo worker thread may be
alive: one that is would be joined only at interpreter exit, where it can abort.
"""
import json
import os
import sys

from moniqua_kernels import train


def thread_names():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended while we looked
            pass
    return names


if __name__ == "__main__":
    rc = train.main(sys.argv[1:])
    line = "PROBE " + json.dumps({"rank": int(os.environ["RANK"]), "rc": rc,
                                  "threads": thread_names()}) + "\n"
    # One write: torchrun runs its ranks unbuffered (python -u) into one pipe, where
    # print's two writes (the text, then the newline) of two ranks interleaved once in
    # CI ('{"rank": 0, ...}PROBE {"rank": 1, ...}' on one line).  A pipe write of at most
    # PIPE_BUF (4096) bytes is atomic.
    sys.stdout.flush()
    os.write(1, line.encode())
