"""Export over the bus is paged: a chain with more checkpoints than one NATS reply holds
(issue 11: about 3,000) exports through the audit service process and verifies.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import orjson

from libs.audit import export_lines
from libs.errors import EnclaveError
from libs.events import AuditExportRequest, AuditReply
from libs.settings import Settings
from libs.signing import trusted_keys
from services.audit import checkpoint
from services.audit.adapters.bundle_file import verify_path
from tests.audit.conftest import drop_streams
from tests.audit.helpers import events
from tests.audit.test_store import make_service, typed
from tests.infra import Infra, Platform, platform_env

ENTRIES = 300
CHECKPOINTS = 3_500


async def test_export_of_3500_checkpoints_is_paged_and_verifies(
    services: Infra, pg_url: str, tmp_path: Path
) -> None:
    # The chain and its checkpoints, made directly in the store (signing is what costs).
    service = await make_service(pg_url, tmp_path)
    await service.append(typed(events(ENTRIES)))
    heads = {e.seq: e.hash for e in await service.store.page("acme", 0, ENTRIES, ENTRIES)}
    cps = [
        checkpoint.sign(
            "acme", 1 + i % ENTRIES, heads[1 + i % ENTRIES], f"t{i:05d}", service.private_key
        )
        for i in range(CHECKPOINTS)
    ]
    await service.store.add_checkpoints(cps)
    await service.store.engine.dispose()

    env = platform_env(services, tmp_path, 0, ENCLAVE_DATABASE_URL=pg_url)
    plat = Platform(env=env, home=tmp_path, base_url="")
    settings = Settings(
        home=tmp_path, nats_url=services.nats_url, bus_prefix=env["ENCLAVE_BUS_PREFIX"]
    )
    plat.start("audit", "audit")
    nc = await nats.connect(services.nats_url)
    sizes: list[int] = []

    async def ask(req: AuditExportRequest) -> AuditReply:
        msg = await nc.request(
            settings.subjects.audit_api_export, req.model_dump_json().encode(), timeout=30
        )
        sizes.append(len(msg.data))
        reply = AuditReply.model_validate_json(msg.data)
        if reply.error is not None:
            raise EnclaveError.of(reply.error)
        return reply

    try:
        for _ in range(300):  # until the service answers
            try:
                await ask(AuditExportRequest(tenant="nobody", upto=0))
                break
            except Exception:
                assert plat.procs["audit"].poll() is None, plat.logs()[-3000:]
                await asyncio.sleep(0.2)
        bundle = tmp_path / "acme.jsonl"
        with open(bundle, "wb") as f:
            async for chunk in export_lines(ask, "acme"):
                f.write(chunk)
    finally:
        plat.stop_all()
        await nc.close()
        await drop_streams(settings)

    lines = bundle.read_bytes().splitlines()
    kinds = [orjson.loads(line).get("type", "entry") for line in lines]
    assert kinds[0] == "header" and kinds[-1] == "checkpoint"
    assert kinds.count("checkpoint") == CHECKPOINTS + 1  # and the export's own
    assert kinds.count("entry") == ENTRIES + 1  # and the record of this export
    assert orjson.loads(lines[-2])["body"]["event"]["action"] == "audit.export"
    assert len(sizes) > 4 and max(sizes) < 1024 * 1024  # paged: each reply fits NATS
    report = verify_path(bundle, keys=None, public_keys=trusted_keys([tmp_path / "audit.pub"]))
    assert report.ok, report.summary()
    assert report.count == ENTRIES + 1 and report.newest_count == ENTRIES + 1
