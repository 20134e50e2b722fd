"""A server whose TLS certificate this machine does not trust (a proxy inspecting TLS, signing with the
organisation's own CA): the run stops saying so and how to trust that CA, live and with the Batch API."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from asyncbatch.cli.main import main
from tests.helpers import serve_app, write_jsonl

KEY = "tls-test-key-0123456789"


def _self_signed(folder: Path) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 that no CA this machine trusts has signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corporate-inspection-ca")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


@pytest.fixture
def untrusted(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """An HTTPS server on 127.0.0.1 with that certificate, named by the Azure variables; the requests it read."""
    context, received = _self_signed(tmp_path_factory.mktemp("tls")), []

    async def answer(request: web.Request) -> web.Response:
        received.append(request.path)
        return web.json_response({"error": {"message": "never reached"}}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    with serve_app(app, context) as url:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
        monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME", "dep")
        yield received


@pytest.mark.parametrize("mode", ["live", "batch-api"])
def test_an_untrusted_certificate_stops_the_run_saying_how_to_trust_the_organisations_ca(
    tmp_path: Path, untrusted: list[str], capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    """It said "nothing answers" (live) or "Connection error." (the Batch API, after retrying for minutes)."""
    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": "hi"}]}
                                        for i in range(200)])  # fmt: skip
    extra = ["--batch-api", "--poll-interval", "0.05"] if mode == "batch-api" else ["--max-outage", "1"]
    assert main(["in.jsonl", "-q", "--max-attempts", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert "TLS certificate is not trusted here" in err and "self-signed certificate" in err
    assert "HINT: if a proxy or firewall inspects TLS, point SSL_CERT_FILE at your organisation's CA bundle" in err
    assert untrusted == [] and KEY not in err  # no request was read: the handshake failed first
    assert not (tmp_path / "in.results.jsonl").exists() or (tmp_path / "in.results.jsonl").read_text() == ""
