"""Configuration: the signing key ring and its safe defaults."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from prefcenter.settings import ConfigError, parse_signing_keys
from tests.support.harness import make_settings


class TestSigningKeys:
    def test_first_key_signs_and_all_are_kept(self) -> None:
        ring = parse_signing_keys("new:" + "n" * 32 + ", old:" + "o" * 32)
        assert [k.kid for k in ring] == ["new", "old"]
        assert ring[0].secret == b"n" * 32

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("k1:short", "too short"),
            ("k1:", "not kid:secret"),
            (":" + "s" * 32, "not kid:secret"),
            ("nocolon", "not kid:secret"),
            ("bad-kid!:" + "s" * 32, "letters or digits"),
            ("a:" + "s" * 32 + ",a:" + "t" * 32, "twice"),
        ],
    )
    def test_bad_rings_are_refused(self, value: str, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            parse_signing_keys(value)

    @pytest.mark.parametrize(
        "secret",
        ["password12345678", "p" * 31, "pässwörd-" + "x" * 20],
        ids=["16", "31", "31-bytes-29-characters"],
    )
    def test_a_secret_under_32_bytes_is_refused_saying_how_to_make_one(self, secret: str) -> None:
        assert len(secret.encode()) < 32
        with pytest.raises(ConfigError) as refused:
            parse_signing_keys(f"k1:{secret}")

        message = str(refused.value)
        assert "'k1' is too short" in message
        assert "at least 32 bytes" in message
        assert "secrets.token_urlsafe(32)" in message

    def test_a_weak_key_kept_only_to_verify_is_refused_too(self) -> None:
        # Any key in the ring verifies links: a weak old one lets links be forged as well.
        with pytest.raises(ConfigError, match="'old' is too short"):
            parse_signing_keys("new:" + "n" * 32 + ",old:password12345678")

    def test_a_secret_of_32_bytes_is_accepted(self) -> None:
        (key,) = parse_signing_keys("k1:" + "s" * 32)
        assert key.secret == b"s" * 32

    def test_postgres_without_keys_refuses_to_start(self) -> None:
        settings = make_settings("postgresql+psycopg://postgres@127.0.0.1/x", signing_keys="")
        with pytest.raises(ConfigError, match="PREFCENTER_SIGNING_KEYS is required"):
            settings.signing_key_ring()

    def test_sqlite_generates_one_key_beside_the_data_and_keeps_it(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = make_settings(f"sqlite:///{tmp_path / 'data.db'}", signing_keys="")
        first = settings.signing_key_ring()
        key_file = tmp_path / "data.db.signing-keys"
        assert key_file.exists()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert "generated a signing key" in caplog.text
        assert settings.signing_key_ring() == first
        assert len(first) == 1
        assert len(first[0].secret) >= 32

    def test_in_memory_sqlite_needs_keys(self) -> None:
        settings = make_settings("sqlite:///:memory:", signing_keys="")
        with pytest.raises(ConfigError):
            settings.signing_key_ring()

    def test_base_url_loses_its_trailing_slash(self) -> None:
        settings = make_settings("sqlite:///x.db", base_url="https://prefs.example.com/")
        assert settings.base_url == "https://prefs.example.com"


class TestAuditKey:
    @pytest.mark.parametrize("secret", ["password12345678", "a" * 31, " " + "a" * 31 + " "])
    def test_a_key_under_32_bytes_is_refused_saying_how_to_make_one(self, secret: str) -> None:
        settings = make_settings("postgresql+psycopg://postgres@127.0.0.1/x", audit_key=secret)

        with pytest.raises(ConfigError) as refused:
            _ = settings.audit_secret

        message = str(refused.value)
        assert "PREFCENTER_AUDIT_KEY is too short" in message
        assert "at least 32 bytes" in message
        assert "secrets.token_urlsafe(" in message

    def test_a_key_of_32_bytes_is_accepted(self) -> None:
        settings = make_settings("postgresql+psycopg://postgres@127.0.0.1/x", audit_key="a" * 32)
        assert settings.audit_secret == b"a" * 32

    def test_the_generated_keys_are_long_enough(self, tmp_path: Path) -> None:
        settings = make_settings(f"sqlite:///{tmp_path / 'data.db'}", signing_keys="", audit_key="")
        assert len(settings.audit_secret) >= 32
        (key,) = settings.signing_key_ring()
        assert len(key.secret) >= 32
