# The two commands: `make up` starts the platform, `make test` runs every check.
.PHONY: up test lint unit bench bootstrap services

VENV := .venv/bin

bootstrap:
	@bash deploy/local/bootstrap.sh

services:
	@bash deploy/local/services.sh

# enclave up runs its own NATS and Redis, with generated credentials, where none listens.
up: bootstrap
	$(VENV)/enclave up

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy libs services bench
	$(VENV)/lint-imports

test: export ENCLAVE_NEED_POSTGRES = 1
test: export ENCLAVE_NEED_DEPLOY = 1
test: bootstrap
	@bash deploy/local/services.sh --postgres
	$(MAKE) lint
	$(VENV)/pytest -q -p no:cacheprovider

bench: bootstrap services
	$(VENV)/python -m bench
