"""The loop's pure pieces: rollout metrics, the step record, batch building, DP sharding, plots
(hand-computed), and the order of the two stages' requests."""
import asyncio
import json
import math
import os
import pathlib

import pytest
import torch

from igrpo_megatron.config import load_config
from igrpo_megatron.batch import build_train_batch, pack_rows, shard_for_data_parallel
from igrpo_megatron.metrics import mean_over_updates, read_metrics, rollout_metrics, train_record
from igrpo_megatron.rollout.client import Sample
from igrpo_megatron.rollout.dynamic_sampling import refill_size, sample_with_refill, zero_variance_filter
from igrpo_megatron.rollout.two_stage import PromptRollout, TokenizedPrompt, TwoStageRollout

# Recorded runs of the CPU demo, GRPO and iGRPO (its first steps, metrics.jsonl only).
PLOT_RUNS = pathlib.Path(__file__).parent / "data" / "demo_runs"


def _group(index, drafts_acc, best, acc, prompt_len=3, resp_len=2):
    return PromptRollout(
        id=f"synthetic:{index}", question="q", answer="1", prompt_ids=list(range(10, 10 + prompt_len)),
        response_ids=[[5 + j] * resp_len for j in range(len(acc))],
        response_logprobs=[[-0.5] * resp_len for _ in acc],
        rewards=[a + 1.0 for a in acc], accuracy=list(acc), truncated=[False] * len(acc),
        draft_ids=[[1, 2]] * len(drafts_acc), draft_rewards=[a + 1.0 for a in drafts_acc],
        draft_accuracy=list(drafts_acc), best_draft=best)


def test_rollout_metrics_hand_computed():
    groups = [
        _group(0, [0, 1, 0, 0], 1, [1, 1, 0, 1]),  # best draft right; 1 of 4 refinements breaks it
        _group(1, [0, 0, 0, 0], 0, [1, 0, 0, 0]),  # best draft wrong; 1 of 4 fixes it
    ]
    groups[1].draft_rewards = [0.0] * 4  # no draft earned even the format reward
    m = rollout_metrics(groups, num_drafts=4)
    assert m["draft_all_zero_frac"] == 0.5
    assert m["draft_acc"] == pytest.approx(1 / 8)
    assert m["best_draft_acc"] == pytest.approx(0.5)
    assert m["best_draft_acc_bound"] == pytest.approx(1 - (7 / 8) ** 4)
    assert m["refine_acc"] == pytest.approx(4 / 8)
    assert m["trans_wrong_to_right"] == pytest.approx(0.25)
    assert m["trans_right_to_wrong"] == pytest.approx(0.25)
    rewards = [2, 2, 1, 2, 2, 1, 1, 1]
    mean = sum(rewards) / 8
    assert m["reward_mean"] == pytest.approx(mean)
    assert m["reward_std"] == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in rewards) / 7))
    assert m["zero_var_frac"] == 0.0
    assert m["draft_len_mean"] == 2.0 and m["response_len_mean"] == 2.0 and m["prompt_len_mean"] == 3.0


def test_train_record_names_the_loss_figures_and_marks_a_step_without_update():
    rec = train_record({"entropy": 0.5, "approx_kl": 0.01, "mismatch_abs_diff": 1e-6, "clip_frac_low": 0.1,
                         "clip_frac_high": 0.2, "loss": 1.5})
    assert (rec["entropy"], rec["kl"], rec["logprob_mismatch"], rec["loss"]) == (0.5, 0.01, 1e-6, 1.5)
    assert rec["clip_frac"] == pytest.approx(0.3)
    empty = train_record({})  # dynamic sampling dropped every group: no update, no figures
    assert set(empty) == {"entropy", "kl", "logprob_mismatch", "clip_frac"}
    assert all(math.isnan(v) for v in empty.values())


def test_update_figures_are_the_mean_over_mini_batches_and_epochs():
    """Two mini-batches x two PPO epochs with different clip fractions: the step logs their mean,
    not the last one's figures; a ``*_max`` figure keeps the max, and ``train_record`` names it."""
    updates = [{"entropy": e, "approx_kl": kl, "mismatch_abs_diff": 0.0, "clip_frac_low": low, "clip_frac_high": 0.0,
                "mismatch_ratio_max": r, "loss": 1.0}
               for e, kl, low, r in [(1.0, 0.0, 0.0, 1.5), (0.8, 0.02, 0.1, 1.1), (0.6, 0.04, 0.3, 2.5),
                                     (0.4, 0.06, 0.4, 1.2)]]
    m = mean_over_updates(updates)
    assert m["clip_frac_low"] == pytest.approx(0.2) and m["entropy"] == pytest.approx(0.7)
    assert m["approx_kl"] == pytest.approx(0.03) and m["mismatch_ratio_max"] == 2.5
    rec = train_record(m)
    assert rec["clip_frac"] == pytest.approx(0.2) and rec["kl"] == pytest.approx(0.03)
    assert rec["clip_frac"] != train_record(updates[-1])["clip_frac"]
    assert mean_over_updates([]) == {}


def test_pack_rows_right_pads_and_masks_the_response():
    batch = pack_rows([[7, 8], [9]], [[1, 2, 3], [4]], torch.tensor([0.5, -0.5]), pad_id=0,
                      response_logprobs=[[-0.1, -0.2, -0.3], [-0.4]])
    assert batch.tokens.tolist() == [[7, 8, 1, 2, 3], [9, 4, 0, 0, 0]]
    assert batch.response_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert torch.allclose(batch.rollout_logprobs, torch.tensor([[0, 0, -0.1, -0.2, -0.3], [0, -0.4, 0, 0, 0]]))
    assert pack_rows([[7]], [[1]], torch.zeros(1), pad_id=0).rollout_logprobs is None
    assert len(pack_rows([], [], torch.zeros(0), pad_id=0)) == 0


def test_train_batch_layout_and_dynamic_sampling():
    cfg = load_config(None, ["data.preset=synthetic", "igrpo.num_drafts=2", "igrpo.num_refinements=2",
                             "igrpo.group_budget=4", "loss.dynamic_sampling=true"])
    groups = [_group(0, [0, 1], 1, [1, 0], prompt_len=3, resp_len=2),
              _group(1, [0, 0], 0, [0, 0], prompt_len=4, resp_len=1)]  # zero variance: dropped
    kept = zero_variance_filter(groups)
    assert kept == groups[:1]
    batch, info = build_train_batch(kept, cfg, pad_id=0)
    assert batch.tokens.tolist() == [[10, 11, 12, 5, 5], [10, 11, 12, 6, 6]]
    assert batch.response_mask.tolist() == [[0, 0, 0, 1, 1]] * 2
    # grpo: (r - mean) / sample std over [2, 1] -> [+0.7071, -0.7071]
    assert batch.advantages.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)])
    assert batch.rollout_logprobs[0].tolist() == [0, 0, 0, -0.5, -0.5]

    batch, info = build_train_batch(groups, cfg, pad_id=0)  # no dynamic sampling: every group
    assert len(batch) == 4 and batch.tokens.shape[1] == 5
    assert batch.response_mask[2].tolist() == [0, 0, 0, 0, 1] and batch.advantages[2:].tolist() == [0, 0]


def _refill_run(rewards_by_prompt: dict, target: int, max_refills: int, order: list):
    """sample_with_refill over scripted groups: prompt i's refinements score ``rewards_by_prompt[i]``
    (zero variance when absent); ``order`` is the prompt stream, its position the data position."""
    position = [target]

    def draw(n):
        start, position[0] = position[0], position[0] + n
        return order[start:position[0]]

    async def rollout(prompts):
        return [_group(p, [0, 0], 0, rewards_by_prompt.get(p, [0, 0])) for p in prompts]

    return asyncio.run(sample_with_refill(order[:target], target, max_refills, draw, rollout)), position[0]


def test_dynamic_sampling_refills_to_the_full_batch_and_consumes_what_it_drew():
    assert [refill_size(3, 4, 1), refill_size(3, 4, 0), refill_size(1, 8, 7)] == [12, 4, 2]
    order = list(range(40))
    signal = {i: [1, 0] for i in (2, 9, 13, 14, 15, 30)}  # 6 of 40 prompts have reward variance
    step, consumed = _refill_run(signal, target=4, max_refills=4, order=order)
    # round 0: prompts 0-3 keep 1 (2); round 1 draws 3 / (1/4) = 12: 4-15 keep 9, 13, 14, 15 -> 5 kept,
    # the batch takes the first 4 and the fifth is surplus
    assert [int(g.id.split(":")[1]) for g in step.kept] == [2, 9, 13, 14]
    assert step.record() == {"groups_kept": 4.0, "groups_dropped": 11.0, "groups_surplus": 1.0,
                             "refill_rounds": 1.0, "refill_exhausted": 0.0}
    assert len(step.groups) == 16 and step.refill_prompts == 12 and consumed == 16
    # the bound: one refill round cannot find 4 when only prompt 2 of 0..15 has a signal -> train on 1
    step, consumed = _refill_run({2: [1, 0]}, target=4, max_refills=1, order=order)
    assert step.record()["groups_kept"] == 1.0 and step.exhausted and step.refill_rounds == 1
    assert consumed == 16 and step.refill_prompts == 12  # the refill's prompts are consumed all the same
    # negative control: no refill rounds allowed -> only round 0's one kept group
    step, _ = _refill_run(signal, target=4, max_refills=0, order=order)
    assert len(step.kept) == 1 and step.exhausted


def test_overlong_shaping_enters_the_rewards_of_both_stages(tiny_qwen2):
    """DAPO's soft overlong punishment on the scripted completion of k tokens with L_max = k + 1 and
    L_cache = 4: (k + 1 - 4 - k) / 4 = -0.75 on top of the rule reward, drafts and refinements alike."""
    base = ["igrpo.num_drafts=2", "igrpo.num_refinements=3", "igrpo.group_budget=5"]
    groups, _, _, draft, _ = _two_stage(tiny_qwen2, base, hold_second=False)
    k = len(draft) + 1  # the completion ends with its end-of-turn token
    shaped, *_ = _two_stage(tiny_qwen2, base + [f"reward.overlong_max_tokens={k + 1}", "reward.overlong_cache_tokens=4"],
                            hold_second=False)
    for plain, g in zip(groups, shaped):
        assert g.rewards == [r - 0.75 for r in plain.rewards]
        assert g.draft_rewards == [r - 0.75 for r in plain.draft_rewards]


def test_dp_shards_are_equal_and_padding_is_masked():
    cfg = load_config(None, ["data.preset=synthetic"])
    groups = [_group(0, [0, 1, 0, 0], 1, [1, 0, 1, 0]), _group(1, [0, 1, 0, 0], 1, [1, 0, 0, 0])]
    batch, _ = build_train_batch(groups, cfg, pad_id=0)  # 8 rows
    shards = [shard_for_data_parallel(batch.select(slice(0, 7)), r, 2, 3, pad_id=0) for r in range(2)]
    assert [len(s) for s in shards] == [6, 6]  # 7 rows -> padded to 12
    assert sum(float(s.response_mask.sum()) for s in shards) == float(batch.response_mask[:7].sum())
    assert torch.equal(shards[0].tokens, batch.tokens[:6])
    assert float(shards[1].response_mask[1:].sum()) == 0.0  # rows 7.. are padding


def test_plot_writes_pngs(tmp_path):
    from igrpo_megatron.cli.plot import main

    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in (1, 2, 3):
            f.write(json.dumps({"step": step, "reward_mean": 0.1 * step, "refine_acc": 0.2 * step,
                                "draft_acc": 0.1, "best_draft_acc": 0.3, "best_draft_acc_bound": 0.34,
                                "entropy": 1.0 / step, "trans_wrong_to_right": 0.1,
                                "trans_right_to_wrong": 0.05}) + "\n")
        f.write(json.dumps({"step": 2, "reward_mean": 9.0}) + "\n")  # a resumed run repeats step 2
    assert [r["reward_mean"] for r in read_metrics(str(tmp_path))] == [0.1, 9.0, pytest.approx(0.3)]
    assert main([str(tmp_path)]) == 0
    for name in ("reward", "accuracy", "entropy", "transitions"):
        path = tmp_path / "plots" / f"{name}.png"
        assert path.stat().st_size > 1000
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "missing")]) == 2


def test_plot_overlays_a_grpo_and_an_igrpo_run(tmp_path):
    """Two recorded demo runs (the first steps of each): one colour per run in every figure, the
    curves are the files' figures, and a GRPO run gets no draft or transition curves."""
    from igrpo_megatron.cli.plot import FIGURES, figure_lines, main

    runs = {name: str(PLOT_RUNS / name) for name in ("grpo", "igrpo")}
    data = {name: read_metrics(path) for name, path in runs.items()}
    figures = figure_lines(data)
    assert list(figures) == list(FIGURES)
    labels = {name: [line.label for line in lines] for name, lines in figures.items()}
    assert labels["reward"] == labels["entropy"] == labels["response_length"] == ["grpo", "igrpo"]
    assert labels["accuracy"] == ["grpo: samples", "igrpo: refinements", "igrpo: drafts",
                                  "igrpo: best draft"]
    assert labels["transitions"] == ["igrpo: wrong -> right", "igrpo: right -> wrong"]
    colours = {line.label.split(":")[0]: set() for lines in figures.values() for line in lines}
    for lines in figures.values():
        for line in lines:
            colours[line.label.split(":")[0]].add(line.colour)
    assert colours == {"grpo": {"C0"}, "igrpo": {"C1"}}
    grpo_reward, igrpo_reward = figures["reward"]
    assert grpo_reward.values == [r["reward_mean"] for r in data["grpo"]] and len(set(grpo_reward.values)) > 1
    assert igrpo_reward.steps == [r["step"] for r in data["igrpo"]]

    out = tmp_path / "overlay"
    assert main([f"grpo={runs['grpo']}", runs["igrpo"], "--out", str(out)]) == 0
    for name in FIGURES:
        assert open(out / f"{name}.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert main([runs["grpo"], f"grpo={runs['igrpo']}"]) == 2  # two runs named grpo


def test_metrics_logger_writes_jsonl_tensorboard_and_a_progress_line(tmp_path):
    import io

    from igrpo_megatron.metrics import MetricsLogger

    stream = io.StringIO()
    logger = MetricsLogger(str(tmp_path), tensorboard=True, stream=stream)
    logger.log({"step": 1, "refine_acc": 0.25, "draft_acc": 0.1, "best_draft_acc": 0.3,
                "best_draft_acc_bound": 0.34, "draft_len_mean": 12.0, "reward_mean": 0.5, "weight_version": 1})
    logger.close()
    assert read_metrics(str(tmp_path))[0]["refine_acc"] == 0.25
    line = stream.getvalue()
    assert "step    1" in line and "acc 0.250" in line and "draft 0.100 best 0.300" in line and "v1" in line
    events = os.listdir(tmp_path / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)


class ScriptedClient:
    """The rollout server's ``generate`` with fixed completions, where the stage-1 request of one
    prompt (``held``) does not return until ``release`` is set: the test sets it when another
    prompt's refinement request arrives, so that request must go out while ``held`` still decodes.
    The real server and its scheduling are tested in test_rollout_server and the e2e test; this
    makes the order of requests observable."""

    def __init__(self, completion: list[int], held: list[int] | None):
        self.completion, self.held = completion, held
        self.release = asyncio.Event()
        self.requests: list[tuple[list[int], int]] = []

    async def generate(self, prompt_ids, n=1, params=None):
        self.requests.append((list(prompt_ids), n))
        if list(prompt_ids) == self.held:
            await self.release.wait()
        elif len(self.requests) > 1 and list(prompt_ids) != self.requests[0][0]:
            self.release.set()  # a refinement prompt (not a question): free the held drafts
        return [Sample(list(prompt_ids), list(self.completion), [-0.1] * len(self.completion), "stop", 0, False,
                       "scripted") for _ in range(n)]


def _two_stage(tiny_qwen2, overrides, hold_second=True, timeout_s=60.0):
    from transformers import AutoTokenizer

    from igrpo_megatron.algorithms.igrpo import build_prompt_messages
    from igrpo_megatron.data.chat import format_prompt
    from igrpo_megatron.rewards import make_reward
    from igrpo_megatron.rollout import SamplingParams

    cfg = load_config(None, ["data.preset=synthetic", "reward.num_workers=1", *overrides])
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    prompts = [TokenizedPrompt(f"p{i}", q, a, format_prompt(tok, build_prompt_messages(q)))
               for i, (q, a) in enumerate([("What is 1 + 1?", "2"), ("What is 2 + 5?", "7")])]
    draft = tok.encode("<think>1 + 1 = 2</think> <answer>2</answer>", add_special_tokens=False)
    client = ScriptedClient(draft + [tok.eos_token_id], held=prompts[1].prompt_ids if hold_second else None)
    with make_reward(cfg.reward) as reward:
        rollout = TwoStageRollout(cfg, client, SamplingParams(), reward, tok)
        groups = asyncio.run(asyncio.wait_for(rollout.run(prompts), timeout=timeout_s))
    return groups, client, prompts, draft, tok.eos_token_id


def test_refinements_go_out_while_other_prompts_drafts_decode(tiny_qwen2):
    """igrpo.overlap_stages: prompt 0's refinement request is sent while prompt 1's drafts are
    still out (back to back, prompt 1's drafts would never return: the negative control times out)."""
    overrides = ["igrpo.num_drafts=2", "igrpo.num_refinements=3", "igrpo.group_budget=5"]
    groups, client, prompts, draft, eos = _two_stage(tiny_qwen2, overrides)
    stage1 = [p.prompt_ids for p in prompts]
    order = [("draft" if ids in stage1 else "refine", n) for ids, n in client.requests]
    assert order == [("draft", 2), ("draft", 2), ("refine", 3), ("refine", 3)]
    for g, p in zip(groups, prompts):
        assert len(g.response_ids) == 3 and len(g.draft_ids) == 2 and g.best_draft == 0
        # the best draft is quoted as the token ids it was sampled as, without its end-of-turn token
        k = len(draft)
        assert any(g.prompt_ids[i:i + k] == draft for i in range(len(g.prompt_ids)))
        assert not any(g.prompt_ids[i:i + k + 1] == draft + [eos] for i in range(len(g.prompt_ids)))
        assert g.prompt_ids != p.prompt_ids
    # the completion answers 2: right (accuracy + format) for "1 + 1", formatted but wrong for "2 + 5"
    assert [g.rewards for g in groups] == [[2.0] * 3, [1.0] * 3]
    with pytest.raises(asyncio.TimeoutError):  # it can never finish: any bound shows the deadlock
        _two_stage(tiny_qwen2, overrides + ["igrpo.overlap_stages=false"], timeout_s=5.0)


def test_grpo_is_one_stage_on_the_question(tiny_qwen2):
    groups, client, prompts, _, _ = _two_stage(tiny_qwen2, ["igrpo.num_drafts=0", "igrpo.num_refinements=4",
                                                            "igrpo.group_budget=4"], hold_second=False)
    assert [(ids, n) for ids, n in client.requests] == [(p.prompt_ids, 4) for p in prompts]
    assert all(g.prompt_ids == p.prompt_ids and not g.draft_ids for g, p in zip(groups, prompts))


def test_the_old_logprob_pass_runs_only_with_several_updates_per_batch():
    """Its own forward only when the old policy differs from the trained one; the PP=2 parity of
    the shortcut is tests/test_train_batching.py, and with mini_batches=2 the second update's KL to
    the old policy is > 0 (tests/test_trainer_components.py), which only the separate pass gives."""
    from igrpo_megatron.config import TrainConfig
    from igrpo_megatron.models.policy import needs_old_logprobs

    assert not needs_old_logprobs(TrainConfig())
    assert needs_old_logprobs(TrainConfig(mini_batches=2)) and needs_old_logprobs(TrainConfig(ppo_epochs=2))
