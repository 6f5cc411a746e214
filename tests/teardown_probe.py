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
    print("PROBE " + json.dumps({"rank": int(os.environ["RANK"]), "rc": rc,
                                 "threads": thread_names()}), flush=True)
