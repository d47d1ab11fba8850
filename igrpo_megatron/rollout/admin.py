"""Synchronous control-plane calls to one vLLM server (health, pause, weight loading, versions).

These are the development endpoints vLLM exposes with ``VLLM_SERVER_DEV_MODE=1``. They are called
a handful of times per training step, from plain (non-async) trainer code, so this uses the
standard library's urllib rather than the async rollout client.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

from igrpo_megatron.errors import UserError


class RolloutServerError(UserError, RuntimeError):
    """A rollout server answered with an error or could not be reached."""


def parse_weight_version(value: Optional[str]) -> int:
    """The server's weight-version label as an int; vLLM's initial ``"default"`` is version 0.

    A server starts on the checkpoint it was launched with, which is the policy before the first
    update, so every version this project sets is an integer training step >= 1.
    """
    if value in (None, "default"):
        return 0
    try:
        return int(value)
    except ValueError:
        raise RolloutServerError(
            f"weight version {value!r} is not an integer: the server was updated by something other "
            f"than igrpo_megatron.rollout.Refitter"
        ) from None


class ServerAdmin:
    """Control-plane client of one server; every call sends the API key."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None, params: Optional[dict] = None,
                timeout_s: Optional[float] = None) -> Any:
        """One HTTP call; returns the decoded JSON body (None when empty), raises on any error."""
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:2000]
            raise RolloutServerError(f"{method} {url} -> HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise RolloutServerError(f"{method} {url} failed: {e}") from None
        return json.loads(raw) if raw.strip() else None

    def is_healthy(self) -> bool:
        try:
            self.request("GET", "/health", timeout_s=5)
            return True
        except RolloutServerError:
            return False

    def pause(self, mode: str = "wait") -> None:
        # clear_cache=False: the prefix cache is reset explicitly after the weights changed.
        self.request("POST", "/pause", params={"mode": mode, "clear_cache": "false"})

    def resume(self) -> None:
        self.request("POST", "/resume")

    def reset_prefix_cache(self) -> None:
        self.request("POST", "/reset_prefix_cache")

    def collective_rpc(self, method: str, args: list | None = None, kwargs: dict | None = None) -> list:
        """Run ``method`` of the worker extension on every worker; returns one result per worker."""
        out = self.request("POST", "/collective_rpc",
                           {"method": method, "args": args or [], "kwargs": kwargs or {}})
        return out["results"]

    def set_weight_version(self, version: int) -> None:
        self.request("POST", "/update_weight_version", {"new_version": str(version)})

    def weight_version(self) -> int:
        return parse_weight_version(self.request("GET", "/weight_info")["weight_version"])
