"""The HTTP side: raw ASGI for the two inference routes, quart-trio for everything else."""
