"""The OpenAI HTTP contract as pure code: request validation, error bodies, response shapes, SSE.

Nothing in this package performs I/O, so every rule of the wire format is testable on its own.
"""
