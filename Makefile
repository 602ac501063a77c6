# The README's commands. `make serve` and `make test` each set up everything they need.
.PHONY: serve test install install-dev lint typecheck unit bench

serve: install
	.venv/bin/turnout serve $(ARGS)

test: install-dev lint typecheck unit

install:
	scripts/install.sh local,bedrock,redis

install-dev:
	scripts/install.sh local,bedrock,redis,postgres,dev

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench

typecheck:
	.venv/bin/mypy

unit:
	.venv/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: install-dev
	bench/run.sh
