"""Bad security configuration gets a clear error: token files, TLS files, settings and the CLI."""

from __future__ import annotations

import json
import stat

import pytest
from cloud_helpers import loopback_settings
from pki import TestCA
from pydantic import ValidationError

from fpnlink.cloud import CloudService
from fpnlink.cloud.auth import Authenticator, bearer_token, grpc_scopes
from fpnlink.cloud.cli import main
from fpnlink.cloud.tls import load_server_tls
from fpnlink.cloud.tokens import add_token, hash_token, load_tokens, parse_tokens
from fpnlink.edge.credentials import channel_credentials
from fpnlink.shared.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from fpnlink.shared.identity import certificate_identity, owns_stream

GOOD_HASH = "a" * 64


def _doc(**entry: object) -> str:
    return json.dumps({"tokens": [{"name": "cam", "sha256": GOOD_HASH, "scopes": ["ingest"]} | entry]})


class TestTokenFile:
    @pytest.mark.parametrize("text, message", [
        ("{not json", "is not JSON"),
        ('["a"]', '{"tokens": [...]}'),
        (json.dumps({"tokens": ["x"]}), "must be an object"),
        (_doc(token="fpl_secret"), "plaintext"),
        (_doc(name=""), "non-empty string 'name'"),
        (_doc(sha256="abc"), "64 lowercase hex"),
        (_doc(scopes=["write"]), "'scopes' must be"),
        (_doc(scopes=[]), "'scopes' must be"),
    ])
    def test_defects_are_named(self, text, message):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
            parse_tokens(text)

    def test_duplicates_are_refused(self):
        entry = {"name": "cam", "sha256": GOOD_HASH, "scopes": ["ingest"]}
        with pytest.raises(ConfigError, match="duplicate"):
            parse_tokens(json.dumps({"tokens": [entry, entry | {"name": "other"}]}))

    def test_missing_file(self, tmp_path):
        with pytest.raises(ConfigError, match="cannot read the token file"):
            load_tokens(tmp_path / "absent.json")

    def test_add_stores_only_the_hash(self, tmp_path):
        path = tmp_path / "tokens.json"
        first = add_token(path, "cam-1", ["ingest"])
        second = add_token(path, "dash", ["read", "read"])
        text = path.read_text()
        assert first not in text and second not in text
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        entries = load_tokens(path)
        assert {e.name: sorted(e.scopes) for e in entries.values()} == {"cam-1": ["ingest"], "dash": ["read"]}
        assert hash_token(first) in entries
        with pytest.raises(ConfigError, match="duplicate"):
            add_token(path, "cam-1", ["ingest"])

    def test_cli_token_add(self, tmp_path, capsys):
        path = tmp_path / "t.json"
        assert main(["token", "add", "--file", str(path), "--name", "ops", "--scopes", "admin"]) == 0
        token = capsys.readouterr().out.strip()
        assert hash_token(token) in load_tokens(path)
        assert main(["token", "add", "--file", str(path), "--name", "x", "--scopes", "root"]) == 2
        assert "'scopes' must be" in capsys.readouterr().err


class TestAuthenticator:
    def test_scopes_and_admin(self):
        table = parse_tokens(json.dumps({"tokens": [
            {"name": "edge", "sha256": hash_token("i"), "scopes": ["ingest"]},
            {"name": "ops", "sha256": hash_token("a"), "scopes": ["admin"]}]}))
        auth = Authenticator(table)
        assert auth.authorize("i", ["ingest"]).name == "edge"
        assert auth.authorize("a", ["read"]).name == "ops"
        with pytest.raises(PermissionDeniedError, match="needs read"):
            auth.authorize("i", ["read"])
        with pytest.raises(UnauthenticatedError):
            auth.authorize(None, ["ingest"])
        with pytest.raises(UnauthenticatedError, match="unknown"):
            auth.authorize("nope", ["ingest"])
        assert Authenticator(None).authorize(None, ["admin"]).name == "anonymous"

    def test_bearer_header_and_method_scopes(self):
        assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer abc ") == "abc"
        assert bearer_token("Basic abc") is None and bearer_token("Bearer ") is None and bearer_token(None) is None
        assert grpc_scopes("/grpc.health.v1.Health/Check") is None
        assert grpc_scopes("/fpnlink.v1.FeatureLink/Stream") == ("ingest",)
        assert grpc_scopes("/fpnlink.v1.FeatureLink/GetCapabilities") == ("ingest", "read")
        assert grpc_scopes("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == (
            "ingest", "read", "admin")


class TestIdentity:
    @pytest.mark.parametrize("stream, owned", [
        ("cam-7", True), ("cam-7:front", True), ("cam-7/front", False), ("cam-70", False), ("cam-8:cam-7", False),
        ("", False),
    ])
    def test_owns_stream(self, stream, owned):
        assert owns_stream("cam-7", stream) is owned

    def test_certificate_identity(self, tmp_path):
        issued = TestCA(tmp_path, "ca").issue("cam-9")
        assert certificate_identity(issued.cert.read_bytes()) == "cam-9"
        with pytest.raises(ConfigError, match="not a PEM"):
            certificate_identity(b"garbage", "x.pem")


class TestTlsFiles:
    @pytest.fixture(scope="class")
    def ca(self, tmp_path_factory):
        return TestCA(tmp_path_factory.mktemp("ca"), "ca")

    def test_loads_and_detects_mutual(self, ca):
        server = ca.issue("localhost", server=True)
        assert not load_server_tls(server.cert, server.key).mutual
        assert load_server_tls(server.cert, server.key, ca.cert).mutual

    def test_missing_file(self, ca, tmp_path):
        server = ca.issue("localhost", server=True)
        with pytest.raises(ConfigError, match="cannot read the TLS key"):
            load_server_tls(server.cert, tmp_path / "absent.key")

    def test_not_pem(self, ca, tmp_path):
        server = ca.issue("localhost", server=True)
        junk = tmp_path / "junk.pem"
        junk.write_text("hello")
        with pytest.raises(ConfigError, match="holds no PEM certificate"):
            load_server_tls(junk, server.key)
        with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
            load_server_tls(server.cert, junk)
        with pytest.raises(ConfigError, match="client CA"):
            load_server_tls(server.cert, server.key, junk)

    def test_key_of_another_certificate(self, ca):
        one, other = ca.issue("localhost", server=True), ca.issue("cam-1")
        with pytest.raises(ConfigError, match="does not belong"):
            load_server_tls(one.cert, other.key)

    def test_settings_pairing(self, ca):
        server = ca.issue("localhost", server=True)
        with pytest.raises(ValidationError, match="go together"):
            loopback_settings(tls_cert=server.cert)
        with pytest.raises(ValidationError, match="needs tls_cert"):
            loopback_settings(tls_client_ca=ca.cert)

    def test_service_construction_names_the_file(self, tmp_path):
        with pytest.raises(ConfigError, match="absent.json"):
            CloudService(loopback_settings(token_file=tmp_path / "absent.json"))

    def test_cli_serve_exits_cleanly(self, tmp_path, capsys):
        bad = tmp_path / "tokens.json"
        bad.write_text("{")
        code = main(["serve", "--token-file", str(bad), "--grpc-port", "0", "--http-port", "0", "--no-warmup"])
        assert code == 1
        assert "is not JSON" in capsys.readouterr().err

    def test_edge_credentials(self, ca, tmp_path):
        device = ca.issue("cam-1")
        assert channel_credentials() is None
        assert channel_credentials(ca.cert, device.cert, device.key, "tok") is not None
        with pytest.raises(ConfigError, match="go together"):
            channel_credentials(ca.cert, device.cert)
        with pytest.raises(ConfigError, match="needs tls_ca"):
            channel_credentials(None, device.cert, device.key)
        with pytest.raises(ConfigError, match="cannot read the TLS CA"):
            channel_credentials(tmp_path / "absent.pem")
