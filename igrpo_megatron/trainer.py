"""The iGRPO loop (DESIGN.md "One iteration"); GRPO is the same loop with ``igrpo.num_drafts = 0``.

One step::

    prompts -> stage 1: N drafts each -> rewards -> best draft -> refinement prompts
            -> stage 2: G refinements each -> rewards -> group-relative advantages
            -> old (and reference) logprobs from Megatron -> policy update on stage-2 tokens only
            -> refit the rollout server -> metrics -> checkpoint

The trainer owns no math: advantages, losses and prompt wording live in ``algorithms/``, the
model in ``models/``, the transfer of weights in ``weights/`` and ``rollout/``.

Process layout: every rank of the torchrun job runs :func:`train`. Rank 0 alone talks to the
rollout server and the reward pool (the simplest correct choice: one client, one event loop) and
broadcasts the finished rollout to the other ranks; each data-parallel rank then trains on its
shard of the sequences.

Stage overlap: each prompt is one asyncio task (drafts -> score off the event loop -> refinement
request), so one prompt's refinements decode while other prompts' drafts still do, and iGRPO
costs about what GRPO costs. ``igrpo.overlap_stages=false`` runs the stages back to back.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from igrpo_megatron import preemption
from igrpo_megatron.algorithms.advantages import compute_advantages
from igrpo_megatron.algorithms.igrpo import (
    build_prompt_messages,
    dynamic_sampling_mask,
    refinement_prompt_ids,
    select_best_drafts,
)
from igrpo_megatron.algorithms.losses import policy_loss
from igrpo_megatron.batch import TrainBatch
from igrpo_megatron.config import Config, dump_yaml, validate
from igrpo_megatron.data.chat import format_prompt, load_tokenizer
from igrpo_megatron.metrics import MetricsLogger, PromptRollout, generated_tokens, rollout_metrics
from igrpo_megatron.rewards.base import RewardItem

# ------------------------------------------------------------------------------ rollout (rank 0)


@dataclass
class Prompt:
    """One training prompt: the question as text and as stage-1 token ids, and the gold answer."""

    id: str
    question: str
    answer: str
    prompt_ids: list[int]


class TwoStageRollout:
    """Stage 1 and stage 2 of one step against the rollout server, on rank 0's event loop.

    ``client.generate(prompt_ids, n, ...)`` returns samples with ``token_ids``, ``logprobs``,
    ``finish_reason`` and ``weight_version``; ``reward.score_async(items)`` scores in the reward
    pool, off the event loop, so scoring one prompt's drafts does not stall the decoding of the others.
    """

    def __init__(self, cfg: Config, client, params, reward, tokenizer):
        self.cfg, self.client, self.params, self.reward, self.tokenizer = cfg, client, params, reward, tokenizer

    def render(self, messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def sample_and_score(self, prompt_ids: list[int], n: int, question: str, answer: str):
        """``n`` samples of one prompt and their ``(samples, rewards, accuracy)``."""
        samples = await self.client.generate(prompt_ids, n=n, params=self.params)
        items = [RewardItem(self.tokenizer.decode(s.token_ids, skip_special_tokens=True), answer, question)
                 for s in samples]
        results = await self.reward.score_async(items)
        return samples, [r.total for r in results], [r.accuracy for r in results]

    async def drafts(self, p: Prompt):
        """Stage 1: N drafts of ``p``, scored; ``None`` for GRPO."""
        if self.cfg.igrpo.num_drafts == 0:
            return None
        return await self.sample_and_score(p.prompt_ids, self.cfg.igrpo.num_drafts, p.question, p.answer)

    async def refinements(self, p: Prompt, drafts) -> PromptRollout:
        """Stage 2: G samples conditioned on the best draft (GRPO: on the question itself)."""
        out = {}
        prompt_ids = p.prompt_ids
        if drafts is not None:
            samples, rewards, accuracy = drafts
            best = int(select_best_drafts(torch.tensor([rewards]), torch.tensor([accuracy]))[0][0])
            draft = list(samples[best].token_ids)
            if draft and draft[-1] == self.tokenizer.eos_token_id:  # the draft's end-of-turn is not quoted
                draft.pop()
            prompt_ids = refinement_prompt_ids(
                p.question, draft, render=self.render, encode=self.encode,
                max_prompt_tokens=self.cfg.rollout.max_prompt_tokens,
                max_draft_tokens=self.cfg.igrpo.max_draft_tokens)
            out = dict(draft_ids=[list(s.token_ids) for s in samples], draft_rewards=rewards,
                       draft_accuracy=accuracy, best_draft=best)
        samples, rewards, accuracy = await self.sample_and_score(prompt_ids, self.cfg.igrpo.num_refinements,
                                                                   p.question, p.answer)
        return PromptRollout(
            id=p.id, question=p.question, answer=p.answer, prompt_ids=list(prompt_ids),
            response_ids=[list(s.token_ids) for s in samples],
            response_logprobs=[list(s.logprobs) for s in samples],
            rewards=rewards, accuracy=accuracy, truncated=[s.finish_reason == "length" for s in samples],
            weight_version=min(s.weight_version for s in samples), **out)

    async def _one_prompt(self, p: Prompt) -> PromptRollout:
        return await self.refinements(p, await self.drafts(p))

    async def run(self, prompts: Sequence[Prompt]) -> list[PromptRollout]:
        if self.cfg.igrpo.overlap_stages:
            return list(await asyncio.gather(*(self._one_prompt(p) for p in prompts)))
        drafts = await asyncio.gather(*(self.drafts(p) for p in prompts))
        return list(await asyncio.gather(*(self.refinements(p, d) for p, d in zip(prompts, drafts))))


# ------------------------------------------------------------------------------ batch building


def build_train_batch(groups: Sequence[PromptRollout], cfg: Config, pad_id: int) -> tuple[TrainBatch, dict]:
    """Rows = stage-2 completions (prompt + response, right-padded); advantages per group.

    Dynamic sampling (DAPO) drops the groups whose rewards are all equal: their advantages are 0
    and they would only dilute the denominators. The dropped groups are not re-sampled (DAPO
    over-samples to refill the batch); the metrics report how many were kept.
    """
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
    advantages = compute_advantages(rewards, cfg.loss.advantage)
    keep = dynamic_sampling_mask(rewards) if cfg.loss.dynamic_sampling else torch.ones(len(groups), dtype=torch.bool)
    rows = [(g.prompt_ids, resp, lps, float(a))
            for g, adv, k in zip(groups, advantages, keep) if k
            for resp, lps, a in zip(g.response_ids, g.response_logprobs, adv)]
    info = {"groups_kept": float(keep.sum()), "advantage_abs_mean": float(advantages.abs().mean())}
    if not rows:
        return TrainBatch(torch.empty(0, 0, dtype=torch.long), torch.empty(0, 0), torch.empty(0)), info
    width = max(len(p) + len(r) for p, r, _, _ in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    rollout_lp = torch.zeros(len(rows), width)
    for i, (prompt, resp, lps, _) in enumerate(rows):
        start, end = len(prompt), len(prompt) + len(resp)
        tokens[i, :end] = torch.tensor(list(prompt) + list(resp))
        mask[i, start:end] = 1.0
        rollout_lp[i, start:end] = torch.tensor(lps, dtype=torch.float32)
    adv = torch.tensor([a for _, _, _, a in rows], dtype=torch.float32)
    return TrainBatch(tokens=tokens, response_mask=mask, advantages=adv, rollout_logprobs=rollout_lp), info


def shard_for_data_parallel(batch: TrainBatch, dp_rank: int, dp_size: int, micro_batch_size: int,
                            pad_id: int) -> TrainBatch:
    """This DP rank's rows, after padding the batch with all-masked rows to a multiple of
    ``dp_size * micro_batch_size`` so every rank runs the same number of micro-batches (the
    gradient all-reduce and the pipeline schedule need that). Padding rows have mask 0, so they
    add nothing to the loss, whose denominators are the global counts of real tokens."""
    rows = len(batch)
    multiple = dp_size * micro_batch_size
    padded = -(-rows // multiple) * multiple
    if padded > rows:
        extra = padded - rows
        width = batch.tokens.shape[1]
        filler = TrainBatch(
            tokens=torch.full((extra, width), pad_id, dtype=batch.tokens.dtype),
            response_mask=torch.zeros(extra, width),
            advantages=torch.zeros(extra),
            rollout_logprobs=None if batch.rollout_logprobs is None else torch.zeros(extra, width))
        batch = TrainBatch(**{k: None if getattr(batch, k) is None else torch.cat([getattr(batch, k), getattr(filler, k)])
                              for k in ("tokens", "response_mask", "advantages", "rollout_logprobs")})
    per_rank = padded // dp_size
    return batch.select(slice(dp_rank * per_rank, (dp_rank + 1) * per_rank))


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank (pickled over the default group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ------------------------------------------------------------------------------ the loop


class Trainer:
    """Builds every room of a run once, then :meth:`fit` repeats :meth:`step`.

    Construct it on every rank. Every rank walks the same prompt order (so the data position in a
    checkpoint is the same everywhere); rank 0 alone owns the rollout server (launched here unless
    ``rollout.server_urls`` names running ones), the client, the refitter and the reward pool.
    Use it as a context manager so the server and the reward workers end on any exit.
    """

    def __init__(self, cfg: Config):
        from igrpo_megatron.data import PromptIterator, load_prompts
        from igrpo_megatron.models import Policy, initialize_parallel, load_hf_config
        from igrpo_megatron.models.provider import check_layout

        self.cfg = cfg
        self.par = initialize_parallel(cfg.parallel, cfg.train.seed)
        self.is_driver = self.par.rank == 0
        self.hf_cfg = load_hf_config(cfg.model.hf_path)
        validate(cfg, world_size=self.par.world_size)
        check_layout(self.hf_cfg, cfg.parallel.tp, cfg.parallel.pp)
        self.run_dir = cfg.train.output_dir
        self.ckpt_root = os.path.join(self.run_dir, "checkpoints")
        self.tokenizer = load_tokenizer(cfg.model)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.prompts = PromptIterator(load_prompts(cfg.data), cfg.data.seed, cfg.data.shuffle)
        self.total_steps = cfg.train.max_steps if cfg.train.max_steps is not None else (
            cfg.train.epochs * len(self.prompts.examples) // cfg.train.prompts_per_step)
        self.policy = Policy(cfg, self.hf_cfg, total_steps=self.total_steps * cfg.train.ppo_epochs * cfg.train.mini_batches)
        # The reference is the starting model (paper): hf_path, also after a resume.
        self.reference = Policy(cfg, self.hf_cfg, frozen=True) if cfg.loss.kl_beta > 0 else None
        self.step_idx = 0
        self.resumed_step = 0  # 0: nothing to resume, nothing to save before the first step
        self.weight_version = 0
        self.logger: Optional[MetricsLogger] = None
        self._server = self.reward = self.loop = None
        self._resume()
        try:
            if self.is_driver:
                self._start_driver()
            self.refit()  # the server started from hf_path; from here on it serves the policy's weights
        except BaseException:
            self.close()
            raise

    # -- set-up and tear-down

    def _start_driver(self) -> None:
        from igrpo_megatron.rewards import make_reward
        from igrpo_megatron.rollout import Refitter, RolloutClient, SamplingParams, launch_server, resolve_api_key

        os.makedirs(self.run_dir, exist_ok=True)
        with open(os.path.join(self.run_dir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(dump_yaml(self.cfg))
        self.logger = MetricsLogger(self.run_dir, tensorboard=self.cfg.train.tensorboard)
        r = self.cfg.rollout
        urls = list(r.server_urls)
        api_key = resolve_api_key(r, self.run_dir, generate=not urls)
        if not urls:
            self._server = launch_server(r, self.cfg.model.hf_path, os.path.join(self.run_dir, "vllm.log"),
                                         api_key=api_key, tokenizer_path=self.cfg.model.tokenizer_path)
            urls = [self._server.url]
        if r.refit_transport == "disk" and not r.refit_dir and self._server is not None:
            # A server this process launched shares its filesystem: the run folder will do.
            r = dataclasses.replace(r, refit_dir=os.path.join(self.run_dir, "refit"))
            os.makedirs(r.refit_dir, exist_ok=True)
        self.loop = asyncio.new_event_loop()  # one loop for the run: the client's HTTP session lives on it
        self.client = RolloutClient.from_config(r, urls, api_key)
        self.refitter = Refitter(r, urls, api_key, client=self.client, is_sender=True)
        self.reward = make_reward(self.cfg.reward)
        self.rollout = TwoStageRollout(self.cfg, self.client, SamplingParams.from_config(r), self.reward,
                                       self.tokenizer)

    def close(self) -> None:
        if not self.is_driver:
            return
        if self.loop is not None:
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()
        for part in (self.reward, self.logger):
            if part is not None:
                part.close()
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- checkpoints

    def _resume(self) -> None:
        from igrpo_megatron.checkpoint import find_latest, load_checkpoint

        latest = find_latest(self.ckpt_root) if self.cfg.train.resume else None
        if latest is None:
            return
        loaded = load_checkpoint(latest, self.policy.model_chunks, self.policy.optimizer, self.policy.scheduler,
                                 load_optimizer=self.cfg.train.load_optimizer)
        self.step_idx = self.resumed_step = loaded.step
        self.weight_version = int(loaded.extra_state["weight_version"])
        self.prompts.load_state_dict(loaded.extra_state["data"])
        if self.is_driver:
            print(f"resumed from {loaded.path} at step {self.step_idx}", flush=True)

    def save(self) -> str:
        """Checkpoint this step (collective): model, optimizer, schedule, RNG, data position, version."""
        from igrpo_megatron.checkpoint import save_checkpoint

        extra = {"weight_version": self.weight_version, "data": self.prompts.state_dict()}
        return save_checkpoint(self.ckpt_root, self.step_idx, self.policy.model_chunks, self.policy.optimizer,
                               self.policy.scheduler, extra, config=self.cfg, keep_last=self.cfg.train.keep_last)

    # -- the pieces of a step

    def next_prompts(self) -> list[Prompt]:
        """``train.prompts_per_step`` prompts as stage-1 token ids (every rank draws, to keep positions equal)."""
        examples = self.prompts.next_batch(self.cfg.train.prompts_per_step)
        if not self.is_driver:
            return []
        return [Prompt(e.id, e.question, e.answer, format_prompt(self.tokenizer, build_prompt_messages(e.question)))
                for e in examples]

    def refit(self) -> float:
        """Push the policy's weights to the rollout server as ``weight_version`` (collective)."""
        from igrpo_megatron.weights import export_hf_weights

        t0 = time.time()
        buckets = export_hf_weights(self.policy.model_chunks, self.hf_cfg, self.cfg.rollout.refit_bucket_mb << 20)
        if self.is_driver:
            self.refitter.update(buckets, version=self.weight_version)
        else:
            for _ in buckets:  # the export is a collective: every rank drains it
                pass
        dist.barrier()
        return time.time() - t0

    def loss_fn(self, logprobs, entropy, micro: TrainBatch, denominators: dict):
        """The clipped policy-gradient loss of one micro-batch (``algorithms.losses.policy_loss``)."""
        return policy_loss(logprobs, micro.old_logprobs, micro.advantages, micro.response_mask, self.cfg.loss,
                           ref_logprobs=micro.ref_logprobs, rollout_logprobs=micro.rollout_logprobs,
                           entropy=entropy, **denominators)

    def update(self, batch: TrainBatch) -> tuple[dict, float, float]:
        """Old/reference logprobs, then ``ppo_epochs x mini_batches`` optimizer steps on this DP shard."""
        t = self.cfg.train
        t0 = time.time()
        shard = shard_for_data_parallel(batch, self.par.dp_rank, self.par.dp_size, t.micro_batch_size * t.mini_batches,
                                        self.pad_id)
        shard.old_logprobs = self.policy.compute_logprobs(shard)
        if self.reference is not None:
            shard.ref_logprobs = self.reference.compute_logprobs(shard)
        t_logprobs = time.time() - t0
        t0 = time.time()
        per_mini = len(shard) // t.mini_batches
        metrics: dict[str, float] = {}
        for _ in range(t.ppo_epochs):
            for m in range(t.mini_batches):
                metrics = self.policy.train_step(shard.select(slice(m * per_mini, (m + 1) * per_mini)), self.loss_fn)
        return metrics, t_logprobs, time.time() - t0

    def step(self) -> dict:
        """One iteration; returns its metrics record (complete on rank 0, which logs it)."""
        t_step = time.time()
        prompts = self.next_prompts()
        groups, t_rollout = None, 0.0
        if self.is_driver:
            t0 = time.time()
            groups = self.loop.run_until_complete(self.rollout.run(prompts))
            t_rollout = time.time() - t0
        groups = broadcast_object(groups)
        batch, batch_info = build_train_batch(groups, self.cfg, self.pad_id)
        train_metrics, t_logprobs, t_train = ({}, 0.0, 0.0) if len(batch) == 0 else self.update(batch)
        self.step_idx += 1
        self.weight_version += 1
        t_refit = self.refit()
        record = {"step": self.step_idx, "weight_version": self.weight_version,
                  "prompts_consumed": self.prompts.consumed}
        if self.is_driver:
            record.update(rollout_metrics(groups, self.cfg.igrpo.num_drafts))
            record.update(batch_info)
            record.update(_train_record(train_metrics))
            record.update(time_rollout_s=t_rollout, time_logprobs_s=t_logprobs, time_train_s=t_train,
                          time_refit_s=t_refit, time_step_s=time.time() - t_step,
                          tokens_per_s=generated_tokens(groups) / max(t_rollout, 1e-9),
                          rollout_weight_version=min(g.weight_version for g in groups),
                          server_weight_version=self.refitter.admins[0].weight_version(),
                          rollout_retries=self.client.retries, rollout_stale_samples=self.client.stale_samples)
            # cumulative: items scored, timeouts, worker deaths, judge errors
            record.update({f"reward_{k}": v for k, v in self.reward.counters().items()})
            self.logger.log(record)
        if self.cfg.train.save_every and self.step_idx % self.cfg.train.save_every == 0:
            self.save()
        return record

    def fit(self) -> None:
        """Steps until ``total_steps``; the last step is always checkpointed (when saving is on).

        Before each step every rank asks whether any rank got a stop signal (preemption.py);
        then the last finished step is checkpointed, also with saving off (the requeued job
        resumes from it), and :class:`~igrpo_megatron.preemption.StopForRequeue` ends the run.
        """
        while self.step_idx < self.total_steps:
            stop = preemption.all_ranks_stop()
            if stop:
                if not self._checkpointed():
                    self.save()
                raise preemption.StopForRequeue(self.step_idx, stop)
            self.step()
        if self.cfg.train.save_every and not self._checkpointed():
            self.save()

    def _checkpointed(self) -> bool:
        """Whether the state after ``step_idx`` is on disk (as ``step()`` or ``_resume()`` left it)."""
        every = self.cfg.train.save_every
        return self.step_idx == self.resumed_step or bool(every and self.step_idx % every == 0)


def _train_record(m: dict) -> dict:
    """The loss metrics under the names of :data:`~igrpo_megatron.metrics.STEP_FIELDS`.

    The trainer always passes entropy and rollout logprobs to the loss, so every source key exists.
    A step without an update (dynamic sampling dropped every group) records NaN, not a made-up 0.
    """
    if not m:
        return dict.fromkeys(("entropy", "kl", "logprob_mismatch", "clip_frac"), float("nan"))
    rec = {k: float(v) for k, v in m.items()}
    rec.update(entropy=rec["entropy"], kl=rec["approx_kl"], logprob_mismatch=rec["mismatch_abs_diff"],
               clip_frac=rec["clip_frac_low"] + rec["clip_frac_high"])
    return rec


def train(cfg: Config) -> None:
    """``igrpo-train``'s body, on every rank."""
    with Trainer(cfg) as trainer:
        trainer.fit()
