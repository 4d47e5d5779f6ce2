"""Engines: whatever turns a `GenerationRequest` into chunks (mock, remote worker, upstream)."""
