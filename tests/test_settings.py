"""Configuration: the signing key ring and its safe defaults."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from prefcenter.settings import ConfigError, parse_signing_keys
from tests.conftest import make_settings


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
