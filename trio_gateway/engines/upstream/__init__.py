"""The OpenAI-compatible upstream engine: HTTP client, relay, error classification."""
