"""Agent definitions from YAML files, per tenant, read again when a file changes.

Layout: `$ENCLAVE_HOME/agents/<tenant>/<agent>.yaml` (the file's name is the agent's).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.agent_runtime.agents import AGENT_NAME, AgentDefinition, AgentError, parse_agent


class AgentFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, tuple[tuple[int, int], AgentDefinition]] = {}

    def get(self, tenant: str, name: str) -> AgentDefinition:
        """The tenant's agent; KeyError when it has none by that name, AgentError when its
        file is malformed."""
        if not re.match(AGENT_NAME, name) or not re.match(AGENT_NAME, tenant):
            raise KeyError(name)
        path = self.root / tenant / f"{name}.yaml"
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyError(name) from None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        where = f"agents/{tenant}/{name}.yaml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise AgentError(f"{where}: not valid YAML ({exc})") from None
        agent = parse_agent(where, data, name)
        self._cache[path] = (stamp, agent)
        return agent
