"""One OpenAI-compatible ``/v1/chat/completions`` endpoint: messages in, the reply's text out.

The project's one client for a model it does not train: the generative judge
(``rewards/judge.py``) and Critique-GRPO's critic (``rollout/critique.py``) both talk through it,
to vLLM or to any server that speaks the OpenAI chat API. The key comes from an environment
variable (never from a config file), transient failures are retried by ``retry.py``'s rule, and
a request that still fails raises :class:`ChatEndpointError`; what that means (a fallback grade,
a stopped run) is the caller's choice.
"""
from __future__ import annotations

import asyncio
import os
from typing import Optional

import aiohttp

from igrpo_megatron.errors import UserError
from igrpo_megatron.rollout.retry import RETRY_STATUSES, backoff_s, transient_errors


class ChatEndpointError(UserError, RuntimeError):
    """The endpoint gave no usable answer: retries spent, a final HTTP error, or a body that is not JSON."""


class ChatEndpoint:
    """``reply(session, messages, **params)`` posts one chat completion (``complete``: its whole
    first choice); ``params`` go into the request body as they are (``max_tokens``, ``temperature``, vLLM's ``structured_outputs``, ...).
    ``retries`` counts the retries of every request so far."""

    def __init__(self, url: str, model: str, api_key_env: str, *, name: str, timeout_s: float, max_retries: int):
        base = url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model, self.name, self.timeout_s, self.max_retries = model, name, timeout_s, max_retries
        key = os.environ.get(api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retries = 0

    def session(self) -> aiohttp.ClientSession:
        """A session for a batch of requests (a session is bound to the event loop that opened it)."""
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s), headers=self.headers)

    async def reply(self, session: Optional[aiohttp.ClientSession], messages: list[dict], **params) -> str:
        """The reply's text ("" when the answer holds none); ``session=None`` opens one for this request."""
        choice = await self.complete(session, messages, **params)
        try:
            return choice["message"]["content"] or ""
        except (KeyError, TypeError):
            return ""

    async def complete(self, session: Optional[aiohttp.ClientSession], messages: list[dict], **params) -> dict:
        """The answer's first choice as sent (``{}`` when it has none): the reply and, if asked, its logprobs."""
        if session is None:
            async with self.session() as own:
                return await self.complete(own, messages, **params)
        body = {"model": self.model, "messages": messages, **params}
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                await asyncio.sleep(backoff_s(attempt - 1))
            try:
                async with session.post(self.url, json=body) as resp:
                    if resp.status in RETRY_STATUSES:
                        last = f"HTTP {resp.status}"
                        continue
                    if resp.status != 200:
                        raise ChatEndpointError(f"{self.name} {self.url} answered HTTP {resp.status}: "
                                                f"{(await resp.text())[:200]}")
                    data = await resp.json(content_type=None)
            except transient_errors() as e:
                last = f"{type(e).__name__}: {e}"
                continue
            except ValueError as e:  # not JSON
                raise ChatEndpointError(f"{self.name} {self.url} sent a body that is not JSON: {e}") from e
            try:
                return data["choices"][0]
            except (KeyError, IndexError, TypeError):
                return {}
        raise ChatEndpointError(f"{self.name} {self.url} failed after {self.max_retries} retries: {last}")
