"""proxy/tls.py without sockets: which context each setting builds, and how a certificate
file that cannot be used is reported (one line naming the key; exit code 2 at start)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, TLSConfig, UpstreamConfig
from proxy.tls import UpstreamTLS, client_context

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A certificate and key from the documented `make dev-certs`."""
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "dev-certs", f"CERT_DIR={directory}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(directory / "server.crt"), str(directory / "server.key")


def test_no_certificate_no_context() -> None:
    assert client_context(TLSConfig()) is None


def test_client_context(pair: tuple[str, str]) -> None:
    context = client_context(TLSConfig(*pair))
    assert context is not None
    assert context.verify_mode is ssl.CERT_NONE
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    with_ca = client_context(TLSConfig(*pair, client_ca_file=pair[0]))
    assert with_ca is not None and with_ca.verify_mode is ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("broken", "key", "problem"),
    [
        ("cert", "tls.cert_file", "cannot read"),
        ("key", "tls.key_file", "cannot read"),
        ("cert-garbage", "tls.cert_file", "cannot use"),
        ("key-is-cert", "tls.cert_file", "cannot use"),
        ("ca", "tls.client_ca_file", "cannot load"),
    ],
)
def test_unusable_files_name_their_key(
    broken: str, key: str, problem: str, pair: tuple[str, str], tmp_path: Path
) -> None:
    cert, private, ca = pair[0], pair[1], ""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    match broken:
        case "cert":
            cert = str(tmp_path / "missing.crt")
        case "key":
            private = str(tmp_path / "missing.key")
        case "cert-garbage":
            cert = str(garbage)
        case "key-is-cert":
            private = pair[0]
        case "ca":
            ca = str(garbage)
    with pytest.raises(ConfigError) as info:
        client_context(TLSConfig(cert, private, ca))
    assert str(info.value).startswith(f"{key}: {problem}"), info.value
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("mode", "root", "verify", "hostname", "required"),
    [
        ("prefer", "", ssl.CERT_NONE, False, False),
        ("require", "", ssl.CERT_NONE, False, True),
        ("require", "ROOT", ssl.CERT_REQUIRED, False, True),  # libpq: as verify-ca
        ("verify-ca", "ROOT", ssl.CERT_REQUIRED, False, True),
        ("verify-full", "ROOT", ssl.CERT_REQUIRED, True, True),
        ("verify-full", "system", ssl.CERT_REQUIRED, True, True),
    ],
)
def test_upstream_sslmodes(
    mode: str,
    root: str,
    verify: ssl.VerifyMode,
    hostname: bool,
    required: bool,
    pair: tuple[str, str],
) -> None:
    sslrootcert = pair[0] if root == "ROOT" else root
    config = UpstreamConfig("db.example", sslmode=mode, sslrootcert=sslrootcert)
    tls = UpstreamTLS.from_config(config)
    assert tls is not None
    assert (tls.context.verify_mode, tls.context.check_hostname) == (verify, hostname)
    assert (tls.required, tls.server_hostname) == (required, "db.example")


def test_upstream_disable_and_client_certificate(pair: tuple[str, str]) -> None:
    assert UpstreamTLS.from_config(UpstreamConfig()) is None
    config = UpstreamConfig(sslmode="require", sslcert=pair[0], sslkey=pair[1])
    assert UpstreamTLS.from_config(config) is not None
    with pytest.raises(ConfigError, match=r"^upstream\.sslkey: cannot read"):
        UpstreamTLS.from_config(UpstreamConfig(sslmode="require", sslcert=pair[0], sslkey="/no"))


@pytest.mark.parametrize("command", [["--listen", "127.0.0.1:0", "--config"], ["check-config"]])
def test_cli_exits_2_with_one_line_for_a_missing_certificate(
    command: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "tls.yaml"
    config.write_text(f"tls: {{cert_file: {tmp_path}/no.crt, key_file: {tmp_path}/no.key}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *command, str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tls.cert_file: cannot read" in lines[0], result.stderr
