"""Policy documents from YAML files, merged per tenant and agent and reloaded when they change.

Layout under the policy folder ($ENCLAVE_HOME/guardrails by default):
  global.yaml                                (else the packaged policies/global.yaml)
  tenants/<tenant>.yaml
  tenants/<tenant>/agents/<agent>.yaml

The admin API's documents (services/guardrails/policy_api.py) are written here, checked
first against the documents around them, atomically (a temporary file renamed over).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from services.guardrails.policy import (
    EffectivePolicy,
    PolicyDocument,
    PolicyError,
    PolicyRelaxed,
    admin_document,
    effective,
    parse_document,
)

PACKAGED_GLOBAL = Path(__file__).resolve().parent.parent / "policies" / "global.yaml"
# A global policy that checks nothing (benchmarks of the platform's own cost).
PACKAGED_OPEN = PACKAGED_GLOBAL.with_name("open.yaml")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def read_document(path: Path, level: str) -> PolicyDocument:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PolicyError("document", level, f"{path.name} is not valid YAML: {exc}") from None
    return parse_document(data, level)


class PolicyStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[tuple[str, str | None], tuple[tuple[float, ...], EffectivePolicy]] = {}

    def _paths(self, tenant: str, agent: str | None) -> list[tuple[Path, str]]:
        own = self.folder / "global.yaml"
        paths = [(own if own.exists() else PACKAGED_GLOBAL, "global")]
        paths.append((self.folder / "tenants" / f"{tenant}.yaml", "tenant"))
        if agent is not None:
            paths.append((self.folder / "tenants" / tenant / "agents" / f"{agent}.yaml", "agent"))
        return paths

    def stamp(self) -> frozenset[tuple[str, int, int]]:
        """(path, mtime, size) of every policy document: it changes when any of them does."""
        found = set()
        for root, _, files in os.walk(self.folder):
            for name in files:
                if name.endswith((".yaml", ".yml")):
                    path = os.path.join(root, name)
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        continue
                    found.add((path, st.st_mtime_ns, st.st_size))
        return frozenset(found)

    def get(self, tenant: str, agent: str | None = None) -> EffectivePolicy:
        """The merged policy; raises PolicyError if a document is invalid or relaxes."""
        if not _NAME.match(tenant):
            raise PolicyError("tenant", "tenant", f"`{tenant}` is not a valid tenant name")
        if agent is not None and not _NAME.match(agent):
            raise PolicyError("policy", "agent", f"`{agent}` is not a valid policy name")
        paths = self._paths(tenant, agent)
        stamp = tuple(p.stat().st_mtime if p.exists() else -1.0 for p, _ in paths)
        cached = self._cache.get((tenant, agent))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        docs: list[PolicyDocument | None] = []
        for (path, level), mtime in zip(paths, stamp, strict=True):
            if mtime < 0:
                if level == "agent":
                    raise PolicyError("policy", "agent", f"no policy `{agent}` for this tenant")
                docs.append(None)
                continue
            doc = read_document(path, level)
            if level != "global" and doc.tenant != tenant:
                raise PolicyError("tenant", level, f"the document is for tenant `{doc.tenant}`")
            if level == "agent" and doc.agent != agent:
                raise PolicyError("agent", level, f"the document is for agent `{doc.agent}`")
            docs.append(doc)
        global_doc = docs[0]
        assert global_doc is not None
        policy = effective(global_doc, *docs[1:])
        self._cache[(tenant, agent)] = (stamp, policy)
        return policy

    # -- the admin API's documents --

    def path_of(self, tenant: str, agent: str | None) -> Path:
        if not _NAME.match(tenant):
            raise PolicyError("tenant", "tenant", f"`{tenant}` is not a valid tenant name")
        if agent is None:
            return self.folder / "tenants" / f"{tenant}.yaml"
        if not _NAME.match(agent):
            raise PolicyError("agent", "agent", f"`{agent}` is not a valid policy name")
        return self.folder / "tenants" / tenant / "agents" / f"{agent}.yaml"

    def own(self, tenant: str, agent: str | None) -> Any:
        """The document as stored (its data), or None where there is none."""
        path = self.path_of(tenant, agent)
        if not path.exists():
            return None
        try:
            return yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            return {"unreadable": path.name}

    def agents(self, tenant: str) -> list[str]:
        folder = self.folder / "tenants" / tenant / "agents"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.yaml"))

    def _global(self) -> PolicyDocument:
        own = self.folder / "global.yaml"
        return read_document(own if own.exists() else PACKAGED_GLOBAL, "global")

    def check(self, tenant: str, agent: str | None, data: Any | None) -> EffectivePolicy:
        """The merged policy `tenant` (or its `agent`) would run under with `data` as its
        document (None: without one), every level checked by the parser and the merge
        rules; for a tenant's document, each of its agents' documents is checked again
        under it. Raises PolicyError (PolicyRelaxed) naming the rule and the level."""
        doc = admin_document(data, tenant, agent) if data is not None else None
        global_doc = self._global()
        if agent is not None:
            tenant_path = self.path_of(tenant, None)
            tenant_doc = read_document(tenant_path, "tenant") if tenant_path.exists() else None
            return effective(global_doc, tenant_doc, doc)
        policy = effective(global_doc, doc)
        for name in self.agents(tenant):
            agent_doc = read_document(self.path_of(tenant, name), "agent")
            try:
                effective(global_doc, doc, agent_doc)
            except PolicyError as exc:
                kind = PolicyRelaxed if isinstance(exc, PolicyRelaxed) else PolicyError
                raise kind(
                    exc.rule,
                    "agent",
                    f"agent `{name}`'s policy would no longer hold under it: {exc}",
                ) from None
        return policy

    def write(self, tenant: str, agent: str | None, text: str) -> Path:
        """Write the document atomically: a temporary file in the folder, renamed over."""
        path = self.path_of(tenant, agent)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._forget(tenant)
        return path

    def _forget(self, tenant: str) -> None:
        for key in [k for k in self._cache if k[0] == tenant]:
            del self._cache[key]

    def remove(self, tenant: str, agent: str | None) -> bool:
        path = self.path_of(tenant, agent)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._forget(tenant)
        return True
