"""fpnlink-cloud: flags over environment, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import httpx
import pytest
from cloud_helpers import loopback_settings

from fpnlink.cloud import cli


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("FPNLINK_CLOUD_HTTP_PORT", "9000")
    monkeypatch.setenv("FPNLINK_CLOUD_WEIGHTS", "coco")
    args = cli.build_parser().parse_args(["serve", "--weights", "random:3", "--grpc-port", "0", "--min-size", "64",
                                          "--max-size", "96", "--codecs", "raw,quant", "--no-warmup"])
    settings = cli.settings_from_args(args)
    assert (settings.weights, settings.grpc_port, settings.http_port) == ("random:3", 0, 9000)
    assert (settings.min_size, settings.max_size, settings.codecs, settings.warmup) == (64, 96, ["raw", "quant"],
                                                                                         False)


def test_defaults_leave_settings_alone():
    settings = cli.settings_from_args(cli.build_parser().parse_args(["serve"]))
    assert settings.warmup is True and settings.codecs is None and settings.grpc_port == 50051


def test_invalid_settings_exit_2(capsys):
    assert cli.main(["serve", "--min-size", "900", "--max-size", "800"]) == 2
    assert "min_size" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_shuts_down_gracefully_on_signal(tiny_bundle, sig):
    seen = {}

    def on_ready(service):  # runs on the server's event loop: no blocking calls here
        seen["url"] = f"http://127.0.0.1:{service.http_port}"
        seen["ready"] = service.readiness()[0]
        os.kill(os.getpid(), sig)

    previous = signal.getsignal(sig)
    status = asyncio.run(cli.serve(loopback_settings(), bundle_loader=lambda _: tiny_bundle, on_ready=on_ready))
    assert status == 0 and seen["ready"] is True
    assert signal.getsignal(sig) == previous  # handlers are given back
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{seen['url']}/healthz", timeout=2)


def test_serve_exits_1_when_setup_fails(caplog):
    def broken(_):
        raise RuntimeError("weights unreadable")

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(cli.serve(loopback_settings(), bundle_loader=broken)) == 1
    assert "weights unreadable" in caplog.text


def test_port_in_use_exits_1(tiny_bundle, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", str(port),
                         "--no-warmup", "--log-level", "error"]) == 1
    assert "fpnlink-cloud:" in capsys.readouterr().err
