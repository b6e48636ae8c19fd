"""Client side of the worker protocol: start ``SculptorGANLib.slicer_worker`` in a separate Python
(Slicer's ``PythonSlicer``), collect its events without blocking, cancel it.

No Qt here: a background thread reads the worker's stdout into a queue and :meth:`WorkerJob.poll`
drains it. The Slicer widget calls ``poll`` from a ``QTimer``; scripts and tests call :meth:`wait`.

``PythonSlicer`` is a launcher that starts the real Python as its *child*. Cancel therefore asks
the worker to stop (a ``cancel`` line on stdin and a cancel file, since a launcher need not forward
stdin) and, if it has not stopped ``killAfter`` seconds later, kills the whole process tree: the
worker runs in its own process group (POSIX) or process group + ``taskkill /T`` (Windows), and the
real Python's own pid, reported in its ``start`` event, is killed as well.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

from .paths import ensureLibraryImportable, libraryRoot

def parseLine(line: str) -> dict:
    """A worker stdout line as its event (the library's one protocol parser,
    :func:`SculptorGANLib.slicer_worker.parse_line`); other lines as ``{"event": "output", "line": ...}``."""
    ensureLibraryImportable()
    from SculptorGANLib.slicer_worker import parse_line

    return parse_line(line) or {"event": "output", "line": line.rstrip("\r\n")}


def pythonExecutable() -> str:
    """Slicer's ``PythonSlicer`` when running in Slicer, else this interpreter."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    candidate = os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + (".exe" if os.name == "nt" else ""))
    return candidate if os.path.isfile(candidate) else sys.executable


def workerEnvironment() -> Dict[str, str]:
    """This process's environment plus the library on PYTHONPATH and UTF-8, unbuffered output."""
    env = dict(os.environ)
    root = libraryRoot()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONUTF8"] = "1"  # Windows consoles default to a code page; the protocol is UTF-8
    env["PYTHONIOENCODING"] = "utf-8"
    env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    return env


def _alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process (the library's one check)."""
    ensureLibraryImportable()
    from SculptorGANLib.core.processes import process_alive

    return process_alive(pid)


class WorkerJob:
    """One running worker process (and everything it started)."""

    def __init__(self, arguments: List[str], python: Optional[str] = None, killAfter: float = 10.0):
        self.cancelFile = os.path.join(tempfile.mkdtemp(prefix="SculptorGAN-cancel-"), "cancel")
        self.command = [python or pythonExecutable(), "-m", "SculptorGANLib.slicer_worker", *arguments,
                        "--cancel-on-stdin", "--cancel-file", self.cancelFile]
        self.killAfter = killAfter
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.cancelRequestedAt: Optional[float] = None
        self.lastEvent: Optional[dict] = None
        self.workerPid: Optional[int] = None  # the real Python's pid (from its start event)
        self.startedAt = time.monotonic()
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = (getattr(subprocess, "CREATE_NO_WINDOW", 0)
                                       | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        else:
            kwargs["start_new_session"] = True  # own process group: the launcher's children die with it
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=workerEnvironment(), **kwargs)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            event = parseLine(line)
            if event.get("event") == "start" and isinstance(event.get("pid"), int):
                self.workerPid = event["pid"]
            self.events.put(event)
        self.process.stdout.close()

    # --------------------------------------------------------------------------------- state
    @property
    def finished(self) -> bool:
        """True once the process has exited and all its output has been read."""
        return self.process.poll() is not None and not self._reader.is_alive()

    @property
    def returncode(self) -> Optional[int]:
        return self.process.poll()

    def poll(self) -> List[dict]:
        """Events received since the last call (never blocks); enforces the kill deadline after cancel."""
        if (self.cancelRequestedAt is not None and self.running()
                and time.monotonic() - self.cancelRequestedAt > self.killAfter):
            self.kill()
        out = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if event.get("event") in ("done", "error"):
                self.lastEvent = event
            out.append(event)
        return out

    def running(self) -> bool:
        """True while the launcher or the real worker process is still alive."""
        return self.process.poll() is None or (self.workerPid is not None and _alive(self.workerPid))

    def cancel(self) -> None:
        """Ask the worker to stop at its next check; it is killed if it has not stopped ``killAfter`` s later."""
        if self.cancelRequestedAt is not None or not self.running():
            return
        self.cancelRequestedAt = time.monotonic()
        try:
            with open(self.cancelFile, "w", encoding="utf-8") as f:
                f.write("cancel\n")
        except OSError:
            pass
        try:
            self.process.stdin.write("cancel\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            pass

    def kill(self) -> None:
        """Kill the launcher, the real worker and anything else in its process group."""
        if not self.running():
            return
        if os.name == "nt":
            if self.process.poll() is None:
                subprocess.run(["taskkill", "/PID", str(self.process.pid), "/T", "/F"], capture_output=True)
        else:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the group exists while any member lives
            except (ProcessLookupError, PermissionError):
                pass
        if self.process.poll() is None:
            self.process.kill()
        if self.workerPid is not None and self.workerPid != os.getpid() and _alive(self.workerPid):
            try:
                os.kill(self.workerPid, signal.SIGKILL if os.name != "nt" else signal.SIGTERM)
            except OSError:
                pass

    def wait(self, timeout: Optional[float] = None, onEvent=None, interval: float = 0.05) -> int:
        """Block until the worker ends (for scripts and tests); returns its exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            for event in self.poll():
                if onEvent:
                    onEvent(event)
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                self.process.wait()
                raise TimeoutError(f"worker did not finish within {timeout} s")
            time.sleep(interval)
        for event in self.poll():
            if onEvent:
                onEvent(event)
        return self.process.returncode

    def close(self) -> None:
        """Kill whatever still runs, release the pipes and the cancel file."""
        self.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            self.process.stdin.close()
        except (OSError, ValueError):
            pass
        shutil.rmtree(os.path.dirname(self.cancelFile), ignore_errors=True)
