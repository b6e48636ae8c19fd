"""Client side of the worker protocol: start ``SculptorGANLib.slicer_worker`` in a separate Python
(Slicer's ``PythonSlicer``), collect its events without blocking, cancel it.

No Qt here: a background thread reads the worker's stdout into a queue and :meth:`WorkerJob.poll`
drains it. The Slicer widget calls ``poll`` from a ``QTimer``; scripts and tests call :meth:`wait`.
"""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time

from .paths import libraryRoot

PREFIX = "@@SCULPTORGAN "  # same as SculptorGANLib.slicer_worker.PREFIX (kept here: no library import needed)


def parseLine(line: str) -> dict:
    """A protocol line as its event dict; any other line as ``{"event": "output", "line": ...}``."""
    import json

    text = line.rstrip("\r\n")
    if text.startswith(PREFIX):
        try:
            event = json.loads(text[len(PREFIX):])
            if isinstance(event, dict) and "event" in event:
                return event
        except ValueError:
            pass
    return {"event": "output", "line": text}


def pythonExecutable() -> str:
    """Slicer's ``PythonSlicer`` when running in Slicer, else this interpreter."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    candidate = os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + (".exe" if os.name == "nt" else ""))
    return candidate if os.path.isfile(candidate) else sys.executable


def workerEnvironment() -> dict:
    env = dict(os.environ)
    root = libraryRoot()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    return env


class WorkerJob:
    """One running worker process."""

    def __init__(self, arguments: list[str], python: str | None = None, killAfter: float = 10.0):
        self.command = [python or pythonExecutable(), "-m", "SculptorGANLib.slicer_worker", *arguments,
                        "--cancel-on-stdin"]
        self.killAfter = killAfter
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.cancelRequestedAt: float | None = None
        self.lastEvent: dict | None = None
        self.startedAt = time.monotonic()
        creationflags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=workerEnvironment(),
            creationflags=creationflags)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.events.put(parseLine(line))
        self.process.stdout.close()

    # --------------------------------------------------------------------------------- state
    @property
    def finished(self) -> bool:
        """True once the process has exited and all its output has been read."""
        return self.process.poll() is not None and not self._reader.is_alive()

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def poll(self) -> list[dict]:
        """Events received since the last call (never blocks); enforces the kill deadline after cancel."""
        if (self.cancelRequestedAt is not None and self.process.poll() is None
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

    def cancel(self) -> None:
        """Ask the worker to stop at its next check; it is killed if it has not stopped ``killAfter`` s later."""
        if self.cancelRequestedAt is not None or self.process.poll() is not None:
            return
        self.cancelRequestedAt = time.monotonic()
        try:
            self.process.stdin.write("cancel\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def wait(self, timeout: float | None = None, onEvent=None, interval: float = 0.05) -> int:
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
        """Kill if still running and release the pipes."""
        self.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.process.stdin,):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
