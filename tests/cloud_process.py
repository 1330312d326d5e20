"""A real ``fpnlink-cloud serve`` process for end-to-end tests: started on ephemeral loopback ports, its ports
read from its log, killed like a crash (SIGKILL) or stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

LISTENING = re.compile(r"fpnlink cloud listening: gRPC [^:]+:(\d+), HTTP [^:]+:(\d+)")
TINY_MODEL_FLAGS = ("--weights", "random:0", "--min-size", "128", "--max-size", "128", "--detections-per-img", "5")


class CloudProcess:
    """``fpnlink-cloud serve`` with the tiny test model, the ``quant`` codec and ``extra`` flags.

    Args:
        log: where the process's stderr goes (read for its ports).
        extra: more ``serve`` flags (``--database-url ...``).
        timeout_s: how long start-up may take.
    """

    def __init__(self, log: Path, *extra: str, timeout_s: float = 120.0) -> None:
        self.log = log
        command = [sys.executable, "-m", "fpnlink.cloud.cli", "serve", *TINY_MODEL_FLAGS, "--codecs", "quant",
                   "--grpc-port", "0", "--http-port", "0", "--no-warmup", "--threads", "1", *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with log.open("w") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        self.grpc_port, self.http_port = self._ports(timeout_s)
        self._wait_ready(timeout_s)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (what a crash leaves behind)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self) -> int:
        """SIGTERM: graceful shutdown; returns the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def _ports(self, timeout_s: float) -> tuple[int, int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log.read_text())
            if match:
                return int(match.group(1)), int(match.group(2))
            if self.process.poll() is not None:
                raise RuntimeError(f"fpnlink-cloud exited {self.process.returncode}:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"fpnlink-cloud did not listen within {timeout_s} s:\n{self.log.read_text()}")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if httpx.get(f"{self.http_url}/readyz", timeout=5).status_code == 200:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"fpnlink-cloud exited {self.process.returncode}:\n{self.log.read_text()}")
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"fpnlink-cloud was not ready within {timeout_s} s:\n{self.log.read_text()}")
