"""`enclave eval ...`: a tenant's eval sets and eval runs, through the trainer's API
(`trainer.api` on the bus: the trainer has the models loaded).

    enclave eval sets put --tenant acme --name support --file support.json [--model BASE]
    enclave eval sets list --tenant acme
    enclave eval run --tenant acme --model acme/base:ft-v2 --eval-set support [--judge-model M]
    enclave eval list --tenant acme [--eval-set support]
    enclave eval show --tenant acme evalrun-...

`run` waits for the report (pass rate per task and overall, deltas against the version
serving that base model) unless `--no-wait`. The CLI acts as the tenant's admin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from libs.settings import Settings

RUN_TIMEOUT_S = 1800.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="eval sets and eval runs of a tenant")
    e = p.add_subparsers(dest="eval_command", required=True)
    p_sets = e.add_parser("sets", help="store or list eval sets")
    s = p_sets.add_subparsers(dest="sets_command", required=True)
    p_put = s.add_parser("put", help="store (or replace) an eval set from a JSON file")
    p_put.add_argument("--tenant", required=True)
    p_put.add_argument("--name", required=True)
    p_put.add_argument("--file", required=True, type=Path)
    p_put.add_argument("--model", help="base model whose serving version runs nightly")
    p_slist = s.add_parser("list", help="a tenant's eval sets")
    p_slist.add_argument("--tenant", required=True)
    p_run = e.add_parser("run", help="run an eval set on a model and store the report")
    p_run.add_argument("--tenant", required=True)
    p_run.add_argument("--model", required=True, help="a base model or tenant/base:ft[-vN]")
    p_run.add_argument("--eval-set", required=True)
    p_run.add_argument("--judge-model", help="judges rubric checks (default: the set's)")
    p_run.add_argument("--no-wait", action="store_true", help="print the run id and return")
    p_list = e.add_parser("list", help="a tenant's eval runs, newest first")
    p_list.add_argument("--tenant", required=True)
    p_list.add_argument("--eval-set")
    p_list.add_argument("--limit", type=int, default=20)
    p_show = e.add_parser("show", help="one eval run's report")
    p_show.add_argument("--tenant", required=True)
    p_show.add_argument("run_id")


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


def operation(args: argparse.Namespace) -> Any:
    """The trainer.api operation a command line asks for."""
    from libs.events import EvalRetrieve, EvalSetPut, EvalSetsList, EvalsList, EvalsRun

    cmd = args.eval_command
    if cmd == "sets" and args.sets_command == "put":
        body = json.loads(args.file.read_text())
        return EvalSetPut(name=args.name, eval_set=body, model=args.model)
    if cmd == "sets":
        return EvalSetsList()
    if cmd == "run":
        return EvalsRun(
            eval_set=args.eval_set,
            model=args.model,
            judge_model=args.judge_model,
            wait=not args.no_wait,
        )
    if cmd == "list":
        return EvalsList(eval_set=args.eval_set, limit=args.limit)
    return EvalRetrieve(run_id=args.run_id)


def render(cmd: str, body: dict[str, Any]) -> str:
    if cmd == "list":
        lines = []
        for r in body["data"]:
            rate = "-" if r["pass_rate"] is None else f"{r['pass_rate']:.2f}"
            delta = (r.get("deltas") or {}).get("_overall")
            lines.append(
                f"{r['id']}  {r['status']:<11}  {r['trigger']:<7}  {r['eval_set']}  "
                f"{r['model']}  pass {rate}  vs {r['serving_model']} {delta:+.2f}"
                if delta is not None
                else f"{r['id']}  {r['status']:<11}  {r['trigger']:<7}  {r['eval_set']}  "
                f"{r['model']}  pass {rate}"
            )
        return "\n".join(lines)
    return json.dumps(body, indent=2)


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    import nats

    from libs.context import RequestContext
    from libs.errors import EnclaveError
    from libs.events import TrainerReply, TrainerRequest
    from libs.rpc import Bus, Peer

    try:
        op = operation(args)
    except (OSError, ValueError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    ctx = RequestContext(
        tenant=args.tenant, request_id="cli-" + secrets.token_hex(8), actor="cli", role="admin"
    )
    try:
        nc = await nats.connect(settings.nats_url, connect_timeout=3, max_reconnect_attempts=0)
    except Exception as exc:
        print(f"NATS not reachable: {exc}", file=sys.stderr)
        return 1
    try:
        peer = Peer("the trainer", "trainer_unavailable", RUN_TIMEOUT_S)
        try:
            reply = await Bus(nc, settings).ask(
                peer,
                settings.subjects.trainer_api,
                TrainerRequest(ctx=ctx, operation=op),
                TrainerReply,
            )
        except EnclaveError as exc:
            print(f"{exc.info.status}: {exc.info.message}", file=sys.stderr)
            return 1
        if reply.error is not None:
            print(f"{reply.error.status}: {reply.error.message}", file=sys.stderr)
            return 1
        print(render(args.eval_command, reply.body))
        if args.eval_command == "run" and reply.body.get("status") == "failed":
            return 1
        return 0
    finally:
        await nc.close()
