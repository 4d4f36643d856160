"""What the tests share: the harness (settings, databases on both engines, API keys),
the fixtures every test may ask for (a plugin, loaded by tests/conftest.py), factories,
and real peers (an SMTP server, a live server, a browser)."""
