"""Remote engine workers: the WebSocket request plane (protocol) and the worker server."""
