"""The trainer's one way into the rollout side: servers, client, refitter and reward pool.

Rank 0 alone talks to the rollout servers and the reward pool (one client, one event loop: the
simplest correct choice) and broadcasts what it got; the other ranks only take part in the
collective weight export of each refit. :func:`connect` gives every rank what its role needs,
and :meth:`RolloutConnection.close` ends whatever it started, on any exit.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

from igrpo_megatron.config import Config
from igrpo_megatron.rollout.client import RolloutClient
from igrpo_megatron.rollout.refit import Refitter
from igrpo_megatron.rollout.server import ServerHandle, launch_server, resolve_api_key


@dataclass
class RolloutConnection:
    """What one trainer rank holds of the rollout side; on ranks other than 0 only ``refitter``,
    which drains the collective export there."""

    refitter: Optional[Refitter] = None
    client: Optional[RolloutClient] = None
    reward: object = None  # rewards.Reward
    loop: Optional[asyncio.AbstractEventLoop] = None  # one loop for the run: the client's HTTP session lives on it
    server: Optional[ServerHandle] = None  # the server this job launched (None: rollout.server_urls)

    def counters(self) -> dict[str, float]:
        """Rank 0's cumulative rollout-side figures for the step's record: the version the server
        serves, client retries and stale samples, and the reward pool's items, timeouts, deaths, errors."""
        return {"server_weight_version": self.refitter.admins[0].weight_version(),
                "rollout_retries": self.client.retries, "rollout_stale_samples": self.client.stale_samples,
                **{f"reward_{k}": v for k, v in self.reward.counters().items()}}

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()
            self.loop = None
        if self.reward is not None:
            self.reward.close()
            self.reward = None
        if self.server is not None:
            self.server.stop()
            self.server = None


def connect(cfg: Config, run_dir: str, *, is_driver: bool) -> RolloutConnection:
    """On rank 0: launch a server from ``model.hf_path`` unless ``rollout.server_urls`` names
    running ones, then the client, the refitter and the reward pool; elsewhere a refitter that
    only drains. Whatever was started is stopped again if a later part fails."""
    from igrpo_megatron.rewards import make_reward

    r = cfg.rollout
    if not is_driver:
        return RolloutConnection(refitter=Refitter(r, is_sender=False))
    conn = RolloutConnection()
    try:
        urls = list(r.server_urls)
        api_key = resolve_api_key(r, run_dir, generate=not urls)
        if not urls:
            conn.server = launch_server(r, cfg.model.hf_path, os.path.join(run_dir, "vllm.log"),
                                        api_key=api_key, tokenizer_path=cfg.model.tokenizer_path)
            urls = [conn.server.url]
        if r.refit_transport == "disk" and not r.refit_dir and conn.server is not None:
            # A server this process launched shares its filesystem: the run folder will do.
            r = dataclasses.replace(r, refit_dir=os.path.join(run_dir, "refit"))
            os.makedirs(r.refit_dir, exist_ok=True)
        conn.loop = asyncio.new_event_loop()
        conn.client = RolloutClient.from_config(r, urls, api_key)
        conn.refitter = Refitter(r, urls, api_key, client=conn.client, is_sender=True)
        conn.reward = make_reward(cfg.reward)
    except BaseException:
        conn.close()
        raise
    return conn
