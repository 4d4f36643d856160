"""Every database test runs on SQLite and on PostgreSQL, on a schema built by the
migrations, each test on an empty database: the fixtures are in tests/support."""

pytest_plugins = ["tests.support.fixtures"]
