"""Whether a process is still running: the one check behind stale-staging clean-up (``io/atomic.py``)
and the Slicer client's view of its worker (``SculptorGANModuleLib/worker.py``)."""
from __future__ import annotations

import os
import subprocess


def process_alive(pid: int) -> bool:
    """True while ``pid`` is a running process (this process included); zombies count as gone.

    On Windows ``tasklist`` is asked: ``os.kill(pid, 0)`` there would send CTRL_C_EVENT, not probe."""
    if pid == os.getpid():
        return True
    if os.name == "nt":
        out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"], capture_output=True, text=True)
        return str(pid) in out.stdout
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) said it exists
