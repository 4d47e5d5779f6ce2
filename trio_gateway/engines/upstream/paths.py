"""Where on an upstream each endpoint lives, from the path of its base URL (no I/O).

The base URL names the OpenAI API root (`http://host:8000/v1`), under which the completions
and `/embeddings` live. vLLM serves `/tokenize` and `/detokenize` at the server's root, not
under `/v1`, so those drop a trailing `/v1` from the base path and keep any prefix before it
(a proxy's `/vllm/v1` gives `/vllm/tokenize`). A base path without `/v1` is taken as the
root itself.
"""

from __future__ import annotations

from trio_gateway.generation import Endpoint

API_SUFFIX = "/v1"
_UNDER_API = {
    "chat": "/chat/completions",
    "completion": "/completions",
    "embeddings": "/embeddings",
}
_AT_ROOT = {"tokenize": "/tokenize", "detokenize": "/detokenize"}


def endpoint_path(base_path: str, endpoint: Endpoint) -> str:
    """The request path of `endpoint` on an upstream whose base URL's path is `base_path`."""
    base = base_path.rstrip("/")
    if endpoint in _UNDER_API:
        return base + _UNDER_API[endpoint]
    root = base[: -len(API_SUFFIX)] if base.endswith(API_SUFFIX) else base
    return root + _AT_ROOT[endpoint]
