"""geofed test suite (a package so that ``tests.infra`` helpers import by name)."""
