"""Real ``fpnlink-cloud serve`` and ``fpnlink-edge run`` processes on loopback, for the fault tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fpnlink.edge.client import Client

SIZE = 64
"""Network-input size of both sides: small, so a frame costs little on 2 CPU cores."""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CloudProcess:
    """``fpnlink-cloud serve`` (random:0 weights, 64 px, no store) on a fixed loopback port; restartable."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, ready_timeout_s: float = 120.0) -> None:
        self.starts += 1
        log = (self.log_dir / f"cloud-{self.starts}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from fpnlink.cloud.cli import main; sys.exit(main())", "serve",
             "--host", "127.0.0.1", "--grpc-port", str(self.port), "--http-port", "0", "--weights", "random:0",
             "--min-size", str(SIZE), "--max-size", str(SIZE), "--no-warmup", "--no-store", "--threads", "1",
             "--detections-per-img", "5"], stdout=log, stderr=subprocess.STDOUT, env=ENV)
        with Client(self.target) as client:
            deadline = time.monotonic() + ready_timeout_s
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the cloud exited with {self.process.returncode}: {self.log()}")
                try:
                    client.wait_ready(2.0)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def log(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.log_dir.glob("cloud-*.log")))


def edge_command(source: Path, target: str, out: Path, spool: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fpnlink.edge.cli", "run", "--source", str(source), "--server", target,
            "--weights", "random:0", "--codec", "quant", "--phi", "4", "--out", str(out), "--spool", str(spool),
            "--threads", "1", "--max-backoff", "1", "--connect-timeout", "60", *extra]


def start_edge(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT, env=ENV)


def rows(out: Path) -> list[dict]:
    """The complete lines of a results file."""
    if not out.is_file():
        return []
    text = out.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def wait_for_rows(out: Path, count: int, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(rows(out)) < count:
        if process.poll() is not None:
            raise AssertionError(f"the edge exited ({process.returncode}) before {count} results")
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} results after {timeout_s} s")
        time.sleep(0.05)
