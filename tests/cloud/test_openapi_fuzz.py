"""Property-based requests from the app's own OpenAPI spec (schemathesis) against a real server with a filled
results store and bearer tokens on: no request may get a 5xx, and every response must match the spec
(schemathesis' default checks, missing-credential cases included). ``positive_data_acceptance`` is left out:
a schema-valid string is not necessarily a valid cursor, image or FeatureFrame, and those get a 400."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation
from cloud_helpers import loopback_settings, make_frame
from hypothesis import HealthCheck, settings

from fpnlink.cloud import CloudService
from fpnlink.cloud.tokens import SCOPES, add_token
from fpnlink.shared.wire import pb_grpc

MAX_EXAMPLES = 20
"""Per operation; ``st run`` (README) runs more."""


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    return path, add_token(path, "fuzzer", list(SCOPES))


@pytest.fixture(scope="module")
def fuzzed_cloud(tiny_bundle, edge_output, tmp_path_factory, token_file):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'results.db'}"
    settings_ = loopback_settings(store=True, database_url=url, codecs=["quant"], token_file=token_file[0])
    with CloudService(settings_, bundle_loader=lambda _: tiny_bundle).run_in_background() as cloud:
        frames = [make_frame(edge_output, i, tasks=("detect", "segment"), codec="quant", stream_id="cam-1")
                  for i in range(3)]
        with grpc.insecure_channel(cloud.grpc_target) as channel:
            list(pb_grpc.FeatureLinkStub(channel).Stream(iter(frames), timeout=60,
                                                         metadata=[("authorization", f"Bearer {token_file[1]}")]))
        yield cloud


@pytest.fixture(scope="module")
def api_schema(fuzzed_cloud):
    return schemathesis.openapi.from_url(f"{fuzzed_cloud.http_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schemathesis.serializer("application/x-protobuf")
def protobuf_body(_context: schemathesis.SerializationContext, value: object) -> bytes:
    """``POST /v1/frames`` takes raw bytes (a serialized FeatureFrame): send what was generated as is."""
    return value if isinstance(value, bytes) else str(value).encode()


@schema.exclude(path_regex=r"/events$").parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_spec(case, token_file):
    case.call_and_validate(headers=_credentials(case, token_file[1]), timeout=60,
                           excluded_checks=[positive_data_acceptance])


def _credentials(case: schemathesis.Case, token: str) -> dict[str, str]:
    """A valid bearer token, unless the case's headers are what it makes invalid (a missing Authorization among
    them): adding the token would make such a case valid, and the server would rightly accept it."""
    headers = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
    return {} if headers is not None and headers.mode.is_negative else {"Authorization": f"Bearer {token}"}
