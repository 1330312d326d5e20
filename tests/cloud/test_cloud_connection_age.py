"""``max_connection_age_s``: the server closes old gRPC connections, so that clients reconnect (and rebalance)."""

from __future__ import annotations

import threading
import time

import grpc
from cloud_helpers import loopback_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fpnlink.cloud import CloudService


def _states_after_a_call(target: str, wait_s: float) -> list[grpc.ChannelConnectivity]:
    states: list[grpc.ChannelConnectivity] = []
    lock = threading.Lock()

    def seen(state: grpc.ChannelConnectivity) -> None:
        with lock:
            states.append(state)

    with grpc.insecure_channel(target) as channel:
        channel.subscribe(seen)
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        time.sleep(wait_s)
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # the channel reconnects by itself
        channel.unsubscribe(seen)
    with lock:
        return list(states)


def _dropped(states: list[grpc.ChannelConnectivity]) -> bool:
    ready = states.index(grpc.ChannelConnectivity.READY)
    return any(s in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING) for s in states[ready:])


def test_old_connections_are_closed(tiny_bundle):
    settings = loopback_settings(max_connection_age_s=0.3, grace_s=0.1)
    with CloudService(settings, bundle_loader=lambda _: tiny_bundle).run_in_background(wait_ready=False) as cloud:
        assert _dropped(_states_after_a_call(cloud.grpc_target, 2.0))


def test_connections_stay_without_the_setting(tiny_bundle):
    with CloudService(loopback_settings(), bundle_loader=lambda _: tiny_bundle).run_in_background(
            wait_ready=False) as cloud:
        assert not _dropped(_states_after_a_call(cloud.grpc_target, 1.0))
