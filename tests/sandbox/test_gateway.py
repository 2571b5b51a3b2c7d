"""POST /v1/sandbox/exec through the real gateway and the sandbox service as processes."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import _platform
from tests.infra import Infra, Platform


@pytest.fixture(scope="module")
def sandbox_platform(
    services: Infra, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    plat = _platform(services, tmp_path_factory.mktemp("sandbox-platform"))
    try:
        plat.start("sandbox", "sandbox")
        plat.start("gateway", "gateway")
        plat.wait_ready()
        deadline = time.monotonic() + 60
        while True:  # until the sandbox service answers (it tests its backend first)
            r = exec_(plat, plat.admin_key, {"language": "bash", "code": "true"})
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.status_code == 200, (r.text, plat.logs()[-3000:])
        yield plat
    finally:
        plat.stop_all()


def exec_(plat: Platform, key: str, body: object) -> httpx.Response:
    return httpx.post(
        plat.base_url + "/v1/sandbox/exec",
        headers={"Authorization": f"Bearer {key}"},
        json=body,
        timeout=90,
    )


def test_a_developer_runs_python_with_files(sandbox_platform: Platform) -> None:
    dev = sandbox_platform.create_key("acme", "developer")
    r = exec_(
        sandbox_platform,
        dev,
        {
            "language": "python",
            "code": "import json\nrows = json.load(open('in.json'))\n"
            "open('sum.txt', 'w').write(str(sum(rows)))\nprint(len(rows))",
            "files": [{"path": "in.json", "content": "[1, 2, 3]"}],
            "timeout_s": 10,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-request-id"]
    assert {k: body[k] for k in ("status", "exit_code", "stdout", "stderr")} == {
        "status": "ok",
        "exit_code": 0,
        "stdout": "3\n",
        "stderr": "",
    }
    assert body["files"] == [
        {
            "path": "sum.txt",
            "content_b64": base64.b64encode(b"6").decode(),
            "bytes": 1,
            "content": "6",
        }
    ]


def test_bash_and_binary_files(sandbox_platform: Platform) -> None:
    raw = bytes(range(256))
    r = exec_(
        sandbox_platform,
        sandbox_platform.admin_key,
        {
            "language": "bash",
            "code": "wc -c < blob; cp blob copy; exit 4",
            "files": [{"path": "blob", "content_b64": base64.b64encode(raw).decode()}],
        },
    )
    body = r.json()
    assert (body["status"], body["exit_code"], body["stdout"].strip()) == ("error", 4, "256")
    (copy,) = body["files"]
    assert base64.b64decode(copy["content_b64"]) == raw and "content" not in copy


def test_escape_attempts_through_the_api_are_contained(sandbox_platform: Platform) -> None:
    code = (
        "import socket\n"
        "try:\n    socket.create_connection(('127.0.0.1', 4222), timeout=2)\n"
        "except OSError as exc:\n    print(type(exc).__name__)\n"
        "while True:\n    pass\n"
    )
    r = exec_(
        sandbox_platform,
        sandbox_platform.admin_key,
        {"language": "python", "code": code, "timeout_s": 1},
    )
    body = r.json()
    assert (body["status"], body["reason"], body["stdout"]) == (
        "timeout",
        "wall_time_limit",
        "PermissionError\n",
    )


def test_roles_and_bad_requests_get_openai_errors(sandbox_platform: Platform) -> None:
    plat = sandbox_platform
    ok = {"language": "bash", "code": "true"}
    for role in ("user", "auditor"):
        r = exec_(plat, plat.create_key("acme", role), ok)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "insufficient_permissions"
    assert httpx.post(plat.base_url + "/v1/sandbox/exec", json=ok).status_code == 401
    cases = [
        ({"language": "cobol", "code": "x"}, "language"),
        ({"language": "bash"}, "code"),
        ({"language": "bash", "code": "true", "network": True}, "network"),
        ({"language": "bash", "code": "true", "timeout_s": 0}, "timeout_s"),
        ({"language": "bash", "code": "true", "timeout_s": 3600}, "timeout_s"),
        ({"language": "bash", "code": "true", "files": [{"path": "a"}]}, "files.0"),
        ({"language": "bash", "code": "true", "files": [{"path": "../a", "content": ""}]}, None),
    ]
    for body, param in cases:
        r = exec_(plat, plat.admin_key, body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param, (body, error)
        else:
            assert error["param"] == "files.0.path"


def test_the_route_is_in_openapi(sandbox_platform: Platform) -> None:
    doc = httpx.get(sandbox_platform.base_url + "/openapi.json").json()
    body = doc["paths"]["/v1/sandbox/exec"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"language", "code", "files", "timeout_s"}
    assert "content_b64" in schema["properties"]["files"]["items"]["properties"]


def test_no_sandbox_service_is_a_503(sandbox_platform: Platform) -> None:
    sandbox_platform.stop("sandbox")
    r = exec_(sandbox_platform, sandbox_platform.admin_key, {"language": "bash", "code": "true"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "sandbox_unavailable"
