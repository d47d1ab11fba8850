"""Table 1's baselines on hand-computed examples: Critique-GRPO's mixed group, its shaped loss on
refinement tokens; Self-Verification's balanced reward, its buffer, refresh and bit-exact state."""
import json
import math

import pytest
import torch

from igrpo_megatron.algorithms.baselines import (parse_verdict, pick_to_refine, rule_critique, strip_think,
                                                 verification_reward)
from igrpo_megatron.algorithms.losses import policy_loss
from igrpo_megatron.batch import build_train_batch
from igrpo_megatron.config import Config, ConfigError, IGRPOConfig, LossConfig, load_config
from igrpo_megatron.rollout.self_verification import VERIFY_ID, SelfVerificationRollout
from igrpo_megatron.rollout.two_stage import PromptRollout

QUESTION_IDS = [5, 6, 7]


def group(gid, accuracy, shaped=(), responses=None):
    responses = responses or [[10 + i, 11] for i in range(len(accuracy))]
    return PromptRollout(id=gid, question="q " + gid, answer="4", prompt_ids=QUESTION_IDS, response_ids=responses,
                         response_logprobs=[[-1.0] * len(r) for r in responses], rewards=list(accuracy),
                         accuracy=list(accuracy), truncated=[False] * len(accuracy), shaped=list(shaped))


def test_critique_mixed_group_advantages_and_rows():
    """7 initial responses (one right) + 1 refinement (right): one group of 8 under the question;
    grpo advantages over the mixed group: mean 0.25, sample std sqrt(1.5 / 7)."""
    cfg = Config(igrpo=IGRPOConfig(method="critique_grpo", num_drafts=0, num_refinements=8))
    batch, _ = build_train_batch([group("a", [0, 0, 1, 0, 0, 0, 0, 1], shaped=[7])], cfg, pad_id=0)
    std = math.sqrt(1.5 / 7)
    assert batch.advantages.tolist() == pytest.approx([-0.25 / std] * 2 + [0.75 / std] + [-0.25 / std] * 4
                                                      + [0.75 / std])
    assert batch.shaping_gamma.tolist() == pytest.approx([0.0] * 7 + [0.1])
    assert all(row[:3].tolist() == QUESTION_IDS for row in batch.tokens)  # refinement scored under q
    plain, _ = build_train_batch([group("a", [0, 1])], Config(), pad_id=0)
    assert plain.shaping_gamma is None  # no baseline, no shaping tensor


def test_critique_loss_shapes_refinement_tokens_only():
    """Row 0 an initial response (A = +1, on-policy ratio 1), row 1 a refinement (A = -1, pi = 0.4
    per token, gamma = 0.1): rho = 0.4 / 0.5 = 0.8, d rho / d log pi = 0.4 * 0.1 / 0.5^2 = 0.16.
    Per-sequence token mean, then mean over 2 sequences of 2 tokens each."""
    lp = torch.log(torch.tensor([[1.0, 0.3, 0.6], [1.0, 0.4, 0.4]])).requires_grad_()
    mask = torch.tensor([[0.0, 1, 1], [0, 1, 1]])
    adv = torch.tensor([1.0, -1.0])
    loss, m = policy_loss(lp, None, adv, mask, LossConfig(), shaping_gamma=torch.tensor([0.0, 0.1]))
    # row 0: -A * ratio = -1 per token; row 1: -A * rho = +0.8 per token
    assert loss.item() == pytest.approx((-1.0 + 0.8) / 2)
    loss.backward()
    assert lp.grad[0, 1:].tolist() == pytest.approx([-0.25, -0.25])  # -A / 2 tokens / 2 sequences
    assert lp.grad[1, 1:].tolist() == pytest.approx([0.16 / 4, 0.16 / 4])
    assert m["shaped_frac"].item() == pytest.approx(0.5)
    # negative control: the same rows unshaped get -A r's gradient (+0.25), not the shaping's
    lp.grad = None
    policy_loss(lp, None, adv, mask, LossConfig())[0].backward()
    assert lp.grad[1, 1:].tolist() == pytest.approx([0.25, 0.25])
    # the shaped row is never clipped: a ratio of 2 far outside 1 +/- 0.2 still moves it
    old = lp.detach() - math.log(2.0)
    lp.grad = None
    policy_loss(lp, old, adv, mask, LossConfig(), shaping_gamma=torch.tensor([0.0, 0.1]))[0].backward()
    assert lp.grad[0, 1:].tolist() == [0.0, 0.0]  # clipped initial row (A > 0, r = 2 > 1.2)
    assert lp.grad[1, 1:].tolist() == pytest.approx([0.04, 0.04])


def test_critique_pieces_and_config_errors():
    assert pick_to_refine([1, 0, 1, 0], 1) == [1] and pick_to_refine([1, 1], 1) == [0]
    assert pick_to_refine([1, 0, 1, 0], 3) == [1, 3, 0]
    assert rule_critique(False, "7") == "The generated solution is incorrect, the ground truth is 7."
    with pytest.raises(ConfigError, match=r"igrpo.method=critique_grpo samples no drafts; set igrpo.num_drafts=0"):
        load_config(overrides=["data.preset=synthetic", "igrpo.method=critique_grpo"])
    with pytest.raises(ConfigError, match=r"igrpo.critique_refinements=7 must be in \[1, num_refinements - 2\]"):
        load_config(overrides=["data.preset=synthetic", "igrpo.method=critique_grpo", "igrpo.num_drafts=0",
                               "igrpo.num_refinements=8", "igrpo.critique_refinements=7"])
    with pytest.raises(ConfigError, match=r"igrpo.method='dpo' is unknown|'dpo' is not one of"):
        load_config(overrides=["data.preset=synthetic", "igrpo.method=dpo"])


def test_verification_reward_is_balanced_by_the_group_correct_ratio():
    # p = 0.25: a right Yes earns 2 (1 - p) = 1.5, a right No 2 p = 0.5; wrong or unparsed: 0
    assert verification_reward(True, True, 0.25) == 1.5
    assert verification_reward(False, False, 0.25) == 0.5
    assert verification_reward(True, False, 0.25) == verification_reward(False, True, 0.25) == 0.0
    assert verification_reward(None, True, 0.25) == 0.0
    # a verifier that is always right earns 4 p (1 - p) on average; always "Yes" earns 2 p (1 - p), half
    p = 0.25
    assert p * verification_reward(True, True, p) + (1 - p) * verification_reward(False, False, p) == 0.75
    assert p * verification_reward(True, True, p) + (1 - p) * verification_reward(True, False, p) == 0.375
    assert parse_verdict("... Is the answer correct (Yes/No)? No. Wait. Is the answer correct (Yes/No)? **Yes**")
    assert parse_verdict("is the answer correct (yes/no)? no") is False
    assert parse_verdict("Yes") is None
    assert strip_think("<think>scratch</think> <answer>4</answer>") == "<answer>4</answer>"


def test_verify_acc_counts_right_verdicts_of_verifications_only(tokenizer):
    """Two verification groups, 3 right verdicts of 4 and 1 of 4 (a verification's accuracy is
    1[verdict == label], an unparseable reply 0): verify_acc 4 / 8; the problem group is not counted."""
    sv = sv_method(tokenizer)
    groups = [group("p1", [1, 1, 1, 1]), group(VERIFY_ID + "a", [1, 1, 1, 0]), group(VERIFY_ID + "b", [0, 0, 1, 0])]
    assert sv.record(groups) == {"verify_acc": 0.5}
    assert sv.record(groups[2:]) == {"verify_acc": 0.25}
    assert math.isnan(sv.record(groups[:1])["verify_acc"])  # no verification this step


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2)


def sv_method(tokenizer, **igrpo):
    cfg = Config(igrpo=IGRPOConfig(method="self_verification", num_drafts=0, num_refinements=4,
                                   verify_buffer_size=3, **igrpo))
    return SelfVerificationRollout(cfg, None, None, None, tokenizer, total_steps=8)


def test_self_verification_buffer_refresh_and_state(tokenizer):
    sv = sv_method(tokenizer)
    assert sv.refresh_every == 2 and sv.per_step == 51  # a quarter of 8 steps; 40 % of 128 prompts
    ids = [tokenizer.encode(t) for t in ("<think>a</think> 4", "b 5", "c 6", "d 4")]
    steps = [[group("mixed", [1, 0, 0, 1], responses=ids), group("flat", [0, 0, 0, 0]),
              group(VERIFY_ID + "x", [1, 0, 1, 0])],
             [group("half", [0, 1, 0.5, 1])]]  # a non-binary accuracy (a judge's) is not buffered
    sv.observe(steps[0])
    assert (sv.steps_seen, len(sv.pending), sv.buffer) == (1, 4, [])  # only the mixed 0/1 group
    assert [(e["solution"], e["label"], e["p"]) for e in sv.pending] == [
        ("4", True, 0.5), ("b 5", False, 0.5), ("c 6", False, 0.5), ("d 4", True, 0.5)]
    sv.observe(steps[1])  # step 2: refresh, a seeded 3 of the 4, pending starts over
    assert (len(sv.buffer), sv.pending) == (3, [])
    assert {e["solution"] for e in sv.buffer} < {"4", "b 5", "c 6", "d 4"}
    state = json.loads(json.dumps(sv.state_dict()))  # what the checkpoint stores
    again = sv_method(tokenizer)
    again.load_state_dict(state)
    assert again.state_dict() == sv.state_dict()
    for method in (sv, again):  # the same draws and the same next refresh after the round trip
        method.observe(steps[0])
        method.observe(steps[0])
    assert again.state_dict() == sv.state_dict() and len(sv.buffer) == 3
    assert sv_method(tokenizer, verify_refresh_every=60, verify_prompts_per_step=5).refresh_every == 60
