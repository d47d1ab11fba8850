"""When a request to an HTTP server is worth another try, and how long to wait first.

One rule for the rollout client (vLLM servers) and the judge reward (any OpenAI-compatible
endpoint). Worth another try: a connection that failed, broke off or timed out, and the answers
that say the server cannot serve right now (408 request timeout, 429 too many requests, 500, 502
bad gateway, 503 unavailable, 504 gateway timeout). Any other answer is final: another 4xx is the
request's fault, and 501 / 505 do not change on a retry. Retry ``k`` (from 0) waits
``base_s * 2**k`` seconds, at most ``cap_s``.
"""
from __future__ import annotations

import asyncio

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def transient_errors() -> tuple[type[BaseException], ...]:
    """The exceptions of a request that failed in transit (aiohttp is imported on first use)."""
    import aiohttp

    return (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError, ConnectionError)


def backoff_s(retry: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Seconds to wait before retry ``retry`` (0 for the first): doubling from ``base_s``, capped."""
    return min(cap_s, base_s * 2 ** retry)
