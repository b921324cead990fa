"""Top-level pytest configuration: real-server fixtures live in ``tests/infra/fixtures.py``."""

pytest_plugins = ["tests.infra.fixtures"]
