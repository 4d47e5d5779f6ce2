"""trio-gateway: an OpenAI-compatible LLM serving gateway built on Trio's structured concurrency."""

__version__ = "0.1.0"
