"""Run the service in a child process on a loopback port (tests, benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m uvicorn --factory valuerec.serving.app:create_app`` with settings in ``env``."""

    def __init__(self, env: dict[str, str], port: int | None = None, log_path: str | Path | None = None,
                 extra_args: list[str] | None = None, cli: bool = False):
        self.env = {**os.environ, **env}
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = extra_args or []
        self.cli = cli      # start through `valuerec serve` (settings from env and flags) instead of uvicorn
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        if self.cli:
            cmd = [sys.executable, "-m", "valuerec.cli", "serve", "--store", self.env["VALUEREC_STORE"],
                   "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]
        else:
            cmd = [sys.executable, "-m", "uvicorn", "--factory", "valuerec.serving.app:create_app",
                   "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log", *self.extra_args]
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} during start-up"
                                   + (f"; see {self.log_path}" if self.log_path else ""))
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready in {timeout:.0f}s")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run (crash tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
