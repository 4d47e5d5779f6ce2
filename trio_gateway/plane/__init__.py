"""The worker request plane: what a gateway and a worker say to each other over one
WebSocket (the handshake, the frames, their codec). Both sides import it; it imports
neither, so the gateway's worker client (`engines.ws_client`) and the worker (`worker/`)
never import each other."""
