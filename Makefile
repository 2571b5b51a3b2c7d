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
	$(VENV)/mypy libs services/gateway/keys.py services/gateway/policy.py \
		services/gateway/openai_shapes.py services/agent_runtime/pipeline.py \
		services/inference_router/registry.py services/inference_router/engine.py \
		services/audit/chain.py services/audit/checkpoint.py services/audit/bundle.py \
		services/audit/adapters/sql.py \
		services/memory/vectors.py services/memory/chunking.py services/memory/retrieval.py \
		services/memory/extraction.py services/memory/rerank.py services/memory/grounding.py \
		services/memory/rewrite.py \
		services/guardrails/policy.py services/guardrails/screen.py \
		services/guardrails/secrets.py services/guardrails/injection.py \
		services/sandbox
	$(VENV)/lint-imports

test: export ENCLAVE_NEED_POSTGRES = 1
test: export ENCLAVE_NEED_DEPLOY = 1
test: bootstrap
	@bash deploy/local/services.sh --postgres
	$(MAKE) lint
	$(VENV)/pytest -q -p no:cacheprovider

bench: bootstrap services
	$(VENV)/python -m bench
