"""API-key check on EVERY route of a rollout server, loaded into vLLM with ``--middleware``.

vLLM's own ``--api-key`` only guards paths under ``/v1``, ``/v2``, ``/inference`` and ``/cohere``.
The development routes an RL trainer needs (``/collective_rpc``, ``/pause``, ``/resume``,
``/update_weight_version``, ``/init_weight_transfer_engine``, ``/update_weights``, ...) stay open,
and ``/collective_rpc`` runs worker methods, so anyone who can reach the port could replace the
policy's weights. This middleware closes that gap: a request without ``Authorization: Bearer
<key>`` gets 401 on any path, ``/health`` included.

vLLM instantiates ``--middleware`` classes with the app only, so the key travels in the server's
environment (:data:`API_KEY_ENV`), never on its command line (visible in ``ps``).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os

API_KEY_ENV = "IGRPO_ROLLOUT_API_KEY"


class ApiKeyMiddleware:
    """Pure ASGI middleware: 401 unless the bearer token equals ``$IGRPO_ROLLOUT_API_KEY``."""

    def __init__(self, app, api_key: str | None = None) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        if not key:
            raise RuntimeError(
                f"{API_KEY_ENV} is empty: the rollout server refuses to start without an API key "
                f"(igrpo_megatron.rollout.launch_server sets it)"
            )
        self.app = app
        self._digest = hashlib.sha256(key.encode()).digest()

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest)
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and not self._authorized(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = json.dumps({"error": "Unauthorized: send 'Authorization: Bearer <api key>'"}).encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
