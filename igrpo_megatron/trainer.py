"""The iGRPO loop (DESIGN.md "One iteration"); GRPO is the same loop with ``igrpo.num_drafts = 0``.

One step::

    prompts -> stage 1: N drafts each -> rewards -> best draft -> refinement prompts
            -> stage 2: G refinements each -> rewards -> group-relative advantages
            -> old (and reference) logprobs from Megatron -> policy update on stage-2 tokens only
            -> refit the rollout server -> metrics -> checkpoint

The trainer owns no math and no plumbing: the step's sampling is ``rollout.methods`` (the two
stages of ``rollout.two_stage``, or a Table 1 baseline, as ``igrpo.method`` says), the servers,
client, refitter and reward pool ``rollout.connect``, rows and data-parallel shards ``batch``,
the loss ``algorithms``, the model ``models``, the record ``metrics``, the save schedule
``checkpoint.Checkpointer``.

Process layout: every rank of the torchrun job runs :func:`train`. Rank 0 alone talks to the
rollout server and the reward pool and broadcasts the finished rollout to the other ranks; each
data-parallel rank then trains on its shard of the sequences.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch.distributed as dist

from igrpo_megatron import preemption
from igrpo_megatron.algorithms.losses import policy_loss
from igrpo_megatron.batch import TrainBatch, build_train_batch, shard_for_data_parallel
from igrpo_megatron.checkpoint import Checkpointer
from igrpo_megatron.config import Config, dump_yaml, validate
from igrpo_megatron.data import PromptIterator, load_prompts, load_tokenizer
from igrpo_megatron.data.chat import resolve_think_prefill
from igrpo_megatron.data.prompt_budget import tokenize_prompts
from igrpo_megatron.metrics import MetricsLogger, Stopwatch, mean_over_updates, step_record
from igrpo_megatron.models import Policy, broadcast_object, initialize_parallel, load_hf_config
from igrpo_megatron.models.policy import needs_old_logprobs, optimizer_steps
from igrpo_megatron.models.provider import check_layout
from igrpo_megatron.rollout import RefitStats, RolloutConnection, SamplingParams, connect, make_method
from igrpo_megatron.rollout.dynamic_sampling import SampledStep, sample_with_refill
from igrpo_megatron.rollout.pipeline import RolloutPipeline, check_lag
from igrpo_megatron.rollout.samples import SampleLog
from igrpo_megatron.rollout.two_stage import TokenizedPrompt
from igrpo_megatron.weights import export_hf_weights
from igrpo_megatron.weights.hub import resolve_on_node

PHASES = ("rollout", "logprobs", "train", "refit")  # the time_<phase>_s of every record


class Trainer:
    """Builds every room of a run once, then :meth:`fit` repeats :meth:`step`.

    Construct it on every rank. Every rank walks the same prompt order (so the data position in a
    checkpoint is the same everywhere); rank 0 alone holds the rollout side (``rollout.connect``).
    Use it as a context manager so the server and the reward workers end on any exit.
    """

    def __init__(self, cfg: Config):
        self.par = initialize_parallel(cfg.parallel, cfg.train.seed)
        cfg = dataclasses.replace(cfg, model=resolve_on_node(cfg.model))  # hub names -> local snapshots
        self.is_driver = self.par.rank == 0
        self.hf_cfg = load_hf_config(cfg.model.hf_path)
        validate(cfg, world_size=self.par.world_size)
        check_layout(self.hf_cfg, cfg.parallel.tp, cfg.parallel.pp)
        self.tokenizer = load_tokenizer(cfg.model)
        cfg = self.cfg = dataclasses.replace(cfg, reward=resolve_think_prefill(cfg.reward, self.tokenizer))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        examples, self.prompt_ids = tokenize_prompts(load_prompts(cfg.data), self.tokenizer, cfg)
        self.prompts = PromptIterator(examples, cfg.data.seed, cfg.data.shuffle)
        self.total_steps = cfg.train.max_steps if cfg.train.max_steps is not None else (
            cfg.train.epochs * len(self.prompts.examples) // cfg.train.prompts_per_step)
        self.policy = Policy(cfg, self.hf_cfg, total_steps=optimizer_steps(cfg.train, self.total_steps))
        # The reference is the starting model (paper): hf_path, also after a resume.
        self.reference = Policy(cfg, self.hf_cfg, frozen=True) if cfg.loss.kl_beta > 0 else None
        self.step_idx = self.weight_version = 0
        self.rollouts = RolloutPipeline(cfg.rollout.async_steps, lambda: self.next_prompts(cfg.train.prompts_per_step),
                                        self._generate if self.is_driver else None)
        self.checkpointer = Checkpointer(cfg, self.policy, self.prompts, lambda: self.weight_version,
                                         method_state=lambda: self.method.state_dict(), rollouts=self.rollouts)
        resumed = self.checkpointer.resume()
        if resumed is not None:
            self.step_idx, self.weight_version = resumed.step, resumed.weight_version
            if self.is_driver:
                print(f"resumed from {resumed.path} at step {self.step_idx}", flush=True)
        self.logger: Optional[MetricsLogger] = None
        self.conn: Optional[RolloutConnection] = None
        try:
            if self.is_driver:
                self._start_run_dir()
            self.conn = connect(cfg, cfg.train.output_dir, is_driver=self.is_driver)
            # igrpo.method (rollout/methods.py); on every rank, since a method may hold training state
            self.method = make_method(cfg, self.conn.client, SamplingParams.from_config(cfg.rollout),
                                      self.conn.reward, self.tokenizer, total_steps=self.total_steps)
            if resumed is not None:
                self.method.load_state_dict(resumed.method_state)
            self.refit()  # the server started from hf_path; from here on it serves the policy's weights
        except BaseException:
            self.close()
            raise

    def _start_run_dir(self) -> None:
        os.makedirs(self.cfg.train.output_dir, exist_ok=True)
        with open(os.path.join(self.cfg.train.output_dir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(dump_yaml(self.cfg))
        self.logger = MetricsLogger(self.cfg.train.output_dir, tensorboard=self.cfg.train.tensorboard,
                                    start_step=self.step_idx)
        t = self.cfg.train
        self.samples = SampleLog(t.output_dir, self.tokenizer, t.samples_fraction, t.samples_token_ids, t.seed)

    def close(self) -> None:
        self.rollouts.close(self.conn.loop if self.conn is not None else None)
        if self.conn is not None:
            self.conn.close()
        if self.logger is not None:
            self.logger.close()
            self.logger = None

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the pieces of a step

    def next_prompts(self, n: int) -> list[TokenizedPrompt]:
        """The next ``n`` prompts as stage-1 token ids (every rank draws, to keep positions equal)."""
        examples = self.prompts.next_batch(n)
        if not self.is_driver:
            return []
        return [TokenizedPrompt(e.id, e.question, e.answer, self.prompt_ids[e.id]) for e in examples]

    def _generate(self, prompts: list[TokenizedPrompt]) -> SampledStep:
        """The step's rollouts on the server's current weights (rank 0; ``rollout.pipeline`` calls it)."""
        return self.conn.loop.run_until_complete(self.sample(prompts))

    async def sample(self, prompts: list[TokenizedPrompt]) -> SampledStep:
        """The step's rollouts (rank 0); with DAPO's dynamic sampling the zero-variance groups are
        dropped and refilled from further prompts (``loss.dynamic_sampling``, rollout/dynamic_sampling.py)."""
        if not self.cfg.loss.dynamic_sampling:
            groups = await self.method.run(prompts)
            return SampledStep(groups, groups)
        return await sample_with_refill(prompts, self.cfg.train.prompts_per_step,
                                        self.cfg.loss.dynamic_sampling_max_refills, self.next_prompts,
                                        self.method.run)

    def refit(self) -> Optional[RefitStats]:
        """Push the policy's weights to the rollout server as ``weight_version`` (collective);
        the refitter's figures on rank 0, ``None`` elsewhere."""
        buckets = export_hf_weights(self.policy.model_chunks, self.hf_cfg, self.cfg.rollout.refit_bucket_mb << 20,
                                    tied_head=True)
        stats = self.conn.refitter.update(buckets, version=self.weight_version)
        dist.barrier()
        return stats

    def loss_fn(self, logprobs, entropy, micro: TrainBatch, denominators: dict):
        """The clipped policy-gradient loss of one micro-batch (``algorithms.losses.policy_loss``)."""
        return policy_loss(logprobs, micro.old_logprobs, micro.advantages, micro.response_mask, self.cfg.loss,
                           ref_logprobs=micro.ref_logprobs, rollout_logprobs=micro.rollout_logprobs,
                           entropy=entropy, shaping_gamma=micro.shaping_gamma, **denominators)

    def update(self, batch: TrainBatch, watch: Stopwatch) -> dict:
        """Old (only with several updates per batch, ``needs_old_logprobs``) and reference logprobs,
        then ``ppo_epochs x mini_batches`` optimizer steps on this DP shard; the mean of their loss
        figures (``metrics.mean_over_updates``)."""
        t = self.cfg.train
        with watch("logprobs"):
            shard = shard_for_data_parallel(batch, self.par.dp_rank, self.par.dp_size,
                                            t.micro_batch_size * t.mini_batches, self.pad_id)
            if needs_old_logprobs(t):
                shard.old_logprobs = self.policy.compute_logprobs(shard)
            if self.reference is not None:
                shard.ref_logprobs = self.reference.compute_logprobs(shard)
        per_mini = len(shard) // t.mini_batches
        with watch("train"):
            updates = [self.policy.train_step(shard.select(slice(m * per_mini, (m + 1) * per_mini)), self.loss_fn)
                       for _ in range(t.ppo_epochs) for m in range(t.mini_batches)]
        return mean_over_updates(updates)

    def weight_norms(self) -> dict[str, float]:
        """The policy's parameter norm, and the reference's: the starting model's every step, as the
        reference is frozen (collective)."""
        norms = {"weight_norm": self.policy.weight_norm()}
        if self.reference is not None:
            norms["ref_weight_norm"] = self.reference.weight_norm()
        return norms

    def step(self) -> dict:
        """One iteration; returns its metrics record (complete on rank 0, which logs it)."""
        watch = Stopwatch(PHASES)
        with watch("rollout"):
            sampled = self.rollouts.take(more_steps=self.step_idx + 1 < self.total_steps)
            if self.is_driver:
                check_lag(sampled.groups, self.weight_version, self.cfg.rollout.async_steps, self.conn.client)
        sampled = broadcast_object(sampled)
        if not self.is_driver:
            self.next_prompts(sampled.refill_prompts)  # rank 0's refills consumed these prompts
        groups = sampled.groups
        self.method.observe(groups)
        batch, batch_info = build_train_batch(sampled.kept, self.cfg, self.pad_id)
        train_metrics = self.update(batch, watch) if len(batch) else {}
        self.step_idx += 1
        self.weight_version += 1
        with watch("rollout"):
            self.rollouts.wait()  # the next step's rollout ends on the weights it started on
        with watch("refit"):
            refit_stats = self.refit()
        record = {"step": self.step_idx, "weight_version": self.weight_version,
                  "prompts_consumed": self.prompts.consumed, **self.weight_norms()}
        if self.is_driver:
            record.update(step_record(groups, self.cfg.igrpo.num_drafts,
                                      {**batch_info, **sampled.record(), **self.method.record(groups)},
                                      train_metrics, watch, refit_stats, self.conn.counters()))
            self.logger.log(record)
            self.samples.write(self.step_idx, groups)
        self.checkpointer.maybe_save(self.step_idx, last=self.step_idx == self.total_steps)
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
                if self.step_idx and self.checkpointer.last_saved != self.step_idx:
                    self.checkpointer.save(self.step_idx)
                raise preemption.StopForRequeue(self.step_idx, stop)
            self.step()


def train(cfg: Config) -> None:
    """``igrpo-train``'s body, on every rank."""
    with Trainer(cfg) as trainer:
        trainer.fit()
