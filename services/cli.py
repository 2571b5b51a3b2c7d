"""The `enclave` command: run one service, start the whole platform, manage keys and models.

This is the one place that knows every service; services never import each other.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from libs.settings import Settings, load_settings
from services import backup as backup_cli
from services import keys_cli
from services.agent_runtime import skills_cli
from services.audit import cli as audit_cli
from services.trainer import cli as trainer_cli
from services.trainer import eval_cli

if TYPE_CHECKING:
    from libs.service import ServiceApp

SERVICES = (
    "gateway",
    "agent_runtime",
    "inference_router",
    "worker",
    "audit",
    "memory",
    "guardrails",
    "sandbox",
    "trainer",
)


def serve(settings: Settings, service: str, pool: str | None) -> None:
    import uvloop

    from libs.logs import setup_logging
    from libs.metrics import serve_metrics

    setup_logging(service, pool)  # JSON lines on stderr, redacted: libs/logs.py

    if service == "gateway":
        import uvicorn

        from services.gateway.app import create_app

        serve_metrics(settings, service, pool)
        uvicorn.run(
            create_app(settings),
            host=settings.gateway_host,
            port=settings.gateway_port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            log_config=None,  # uvicorn's records through setup_logging's handler
            access_log=False,
        )
        return
    app: ServiceApp
    if service == "agent_runtime":
        from services.agent_runtime.app import build_app as build_runtime

        app = build_runtime(settings)
    elif service == "inference_router":
        from services.inference_router.app import build_app as build_router

        app = build_router(settings)
    elif service == "worker":
        if not pool:
            raise SystemExit("enclave serve worker needs --pool")
        from services.inference_router.workers.app import build_app as build_worker

        app = build_worker(settings, pool)
    elif service == "audit":
        from services.audit.app import build_app as build_audit

        app = build_audit(settings)
    elif service == "memory":
        from services.memory.app import build_app as build_memory

        app = build_memory(settings)
    elif service == "guardrails":
        from services.guardrails.app import build_app as build_guardrails

        app = build_guardrails(settings)
    elif service == "sandbox":
        from services.sandbox.app import build_app as build_sandbox

        app = build_sandbox(settings)
    elif service == "trainer":
        from services.trainer.app import build_app as build_trainer

        app = build_trainer(settings)
    else:
        raise SystemExit(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    # /metrics, /healthz, /readyz (libs/metrics.py); ready once the service serves.
    metrics = serve_metrics(settings, service, pool)
    if metrics is not None:
        metrics.add_ready_check(app.started.is_set)
    uvloop.run(app.run())


async def _add_model(settings: Settings, args: argparse.Namespace) -> None:
    from libs.db.engine import make_engine, migrate_async
    from services.inference_router.adapters.sql_models import add_route
    from services.inference_router.registry import rag_default

    await migrate_async(settings)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        params = {"rag": {"collection": args.rag_collection}} if args.rag_collection else {}
        rag_default({"id": args.id, "kind": args.kind, **params})  # refuse a bad one now
        await add_route(engine, args.id, args.kind, args.pool, args.tenant, args.adapter, params)
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enclave", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run one service (scale a stage by running more)")
    p_serve.add_argument("service", choices=SERVICES)
    p_serve.add_argument("--pool", help="worker pool from the model registry")
    p_serve.add_argument("--port", type=int, help="gateway port")

    p_up = sub.add_parser("up", help="start the whole platform on this machine")
    p_up.add_argument("--only", nargs="*", default=[], help="start only these services")

    sub.add_parser("migrate", help="bring the database schema up to date")

    p_keys = sub.add_parser("keys", help="API keys")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    p_create = keys_sub.add_parser("create", help="create a key; it is printed once")
    p_create.add_argument("--tenant", required=True)
    p_create.add_argument(
        "--role", required=True, choices=("admin", "developer", "auditor", "user")
    )
    p_create.add_argument("--name", default="")
    p_create.add_argument("--rpm", type=int, default=None, help="requests per minute")
    keys_cli.add_parsers(keys_sub)

    p_models = sub.add_parser("models", help="model registry")
    models_sub = p_models.add_subparsers(dest="models_command", required=True)
    p_add = models_sub.add_parser("add", help="register a model id on a pool")
    p_add.add_argument("--id", required=True)
    p_add.add_argument("--kind", required=True, choices=("chat", "completion", "embedding"))
    p_add.add_argument("--pool", required=True)
    p_add.add_argument("--tenant", default=None)
    p_add.add_argument("--adapter", default=None)
    p_add.add_argument(
        "--rag-collection",
        default=None,
        help="chats with this model retrieve from the tenant's vector store of this name",
    )

    audit_cli.add_parser(sub)
    trainer_cli.add_parser(sub)
    eval_cli.add_parser(sub)
    backup_cli.add_parsers(sub)
    skills_cli.add_parser(sub)

    args = parser.parse_args(argv)
    if getattr(args, "port", None):
        os.environ["ENCLAVE_GATEWAY_PORT"] = str(args.port)
    settings = load_settings()
    if args.command == "serve":
        serve(settings, args.service, args.pool)
    elif args.command == "up":
        from services import up

        return up.run(settings, args.only)
    elif args.command == "migrate":
        from libs.db.engine import migrate

        migrate(settings.sqlalchemy_url)
        print("schema is up to date")
    elif args.command == "keys":
        return keys_cli.run(args, settings)
    elif args.command == "models":
        asyncio.run(_add_model(settings, args))
        print(f"registered {args.id} on pool {args.pool}")
    elif args.command == "audit":
        return audit_cli.run(args, settings)
    elif args.command == "adapters":
        return trainer_cli.run(args, settings)
    elif args.command == "eval":
        return eval_cli.run(args, settings)
    elif args.command == "skills":
        return skills_cli.run(args, settings)
    elif args.command in ("backup", "restore"):
        return backup_cli.run(args, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
