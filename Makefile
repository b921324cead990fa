# geofed: the two commands a new machine needs are `make run` and `make test`.
.PHONY: run test lint typecheck unit bench clean

run:
	@bash scripts/venv.sh
	.venv/bin/geofed serve

test:
	@bash scripts/install-test-deps.sh
	@bash scripts/venv.sh test
	@bash scripts/rucio-venv.sh
	.venv/bin/ruff check src tests $(wildcard bench)
	.venv/bin/mypy
	.venv/bin/pytest -q -p no:cacheprovider

unit:
	@bash scripts/venv.sh test
	.venv/bin/pytest -q tests/unit

lint:
	.venv/bin/ruff check src tests $(wildcard bench)
	.venv/bin/ruff format --check src tests $(wildcard bench)

typecheck:
	.venv/bin/mypy

bench:
	@bash scripts/install-test-deps.sh
	@bash scripts/venv.sh test
	.venv/bin/python bench/run.py

clean:
	rm -rf .venv var build dist src/*.egg-info
