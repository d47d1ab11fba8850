"""Advantages and losses against numbers computed by hand (the derivations are in the comments)."""
import math

import pytest
import torch

from igrpo_megatron.algorithms import (
    compute_advantages,
    entropy_from_logits,
    kl_estimate,
    policy_loss,
    sft_loss,
)
from igrpo_megatron.config import LossConfig

LN = math.log

# ------------------------------------------------------------------------------ advantages

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])


def test_grpo_advantages_use_sample_std_and_zero_for_flat_groups():
    # row 0: mean .5, sample var = 4 * .25 / 3 = 1/3, std .57735 -> +-.5 / .57735 = +-.866025
    # row 1: all equal -> exactly 0 (no eps); row 2: mean .25, var = .75 / 3 = .25, std .5
    expected = torch.tensor([[0.866025, -0.866025, -0.866025, 0.866025], [0.0, 0.0, 0.0, 0.0],
                             [-0.5, -0.5, -0.5, 1.5]])
    torch.testing.assert_close(compute_advantages(REWARDS, "grpo"), expected, atol=1e-6, rtol=0)


def test_grpo_fractional_rewards():
    # identical judge scores give exactly zero. In float32 [.9, .9, .9] has std 7e-8 (the mean is not
    # exactly .9), so a `std == 0` test would return rounding residue / 7e-8 = +.8165 for all three.
    # [.2, .6, .4]: mean .4, sample var .08 / 2 -> std .2
    adv = compute_advantages(torch.tensor([[0.9, 0.9, 0.9], [0.45, 0.45, 0.45], [0.2, 0.6, 0.4]]), "grpo")
    assert torch.equal(adv[:2], torch.zeros(2, 3))
    torch.testing.assert_close(adv[2], torch.tensor([-1.0, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_drgrpo_advantages_are_centred_only():
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [-0.25, -0.25, -0.25, 0.75]])
    torch.testing.assert_close(compute_advantages(REWARDS, "drgrpo"), expected)


def test_rloo_advantages_leave_one_out():
    # row 0: a 1 sees others [0, 0, 1] -> 1 - 1/3; a 0 sees [1, 0, 1] -> 0 - 2/3
    # row 2: a 0 sees [0, 0, 1] -> -1/3; the 1 sees [0, 0, 0] -> 1
    t = 1 / 3
    expected = torch.tensor([[2 * t, -2 * t, -2 * t, 2 * t], [0.0, 0.0, 0.0, 0.0], [-t, -t, -t, 1.0]])
    torch.testing.assert_close(compute_advantages(REWARDS, "rloo"), expected)


def test_advantage_errors():
    with pytest.raises(ValueError, match="valid: \\['drgrpo', 'grpo', 'rloo'\\]"):
        compute_advantages(REWARDS, "ppo")
    with pytest.raises(ValueError, match="group_size >= 2"):
        compute_advantages(torch.ones(3, 1), "grpo")
    with pytest.raises(ValueError, match="NaN"):
        compute_advantages(torch.tensor([[1.0, float("nan")]]), "grpo")


# ------------------------------------------------------------------------------ policy loss
# Shared case: old logprobs -1, ratios r = [[1.5, .5, pad], [1.1, .7, 1.0]], A = [1, -2], eps .2.
# Per-token pg = max(-A r, -A clip(r, .8, 1.2)):
#   seq 0 (A=1):  r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped high); r=.5 -> max(-.5, -.8) = -.5
#   seq 1 (A=-2): r=1.1 -> 2.2; r=.7 -> max(1.4, 1.6) = 1.6 (clipped low); r=1 -> 2
OLD = torch.full((2, 3), -1.0)
LOG_RATIO = torch.tensor([[LN(1.5), LN(0.5), 0.0], [LN(1.1), LN(0.7), 0.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
ADV = torch.tensor([1.0, -2.0])


def _logprobs(log_ratio=LOG_RATIO, old=OLD):
    return (old + log_ratio).requires_grad_()


@pytest.mark.parametrize("aggregation, expected", [
    ("seq_mean_token_mean", 0.5416667),  # ((-1.2 - .5) / 2 + (2.2 + 1.6 + 2) / 3) / 2 = (-.85 + 1.93333) / 2
    ("token_mean", 0.82),  # (-1.2 - .5 + 2.2 + 1.6 + 2) / 5
    ("seq_mean_token_sum_norm", 0.5125),  # (-1.7 / 4 + 5.8 / 4) / 2 with constant 4
])
def test_aggregation_modes(aggregation, expected):
    cfg = LossConfig(aggregation=aggregation, seq_sum_norm_constant=4.0)
    loss, m = policy_loss(_logprobs(), OLD, ADV, MASK, cfg)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["pg_loss"].item() == pytest.approx(expected, abs=1e-6)
    assert m["clip_frac_high"].item() == pytest.approx(0.2)  # the r=1.5 token of 5
    assert m["clip_frac_low"].item() == pytest.approx(0.2)  # the r=.7 token of 5
    assert m["ratio_mean"].item() == pytest.approx(0.96)  # (1.5 + .5 + 1.1 + .7 + 1) / 5
    # k3 of KL(old || new): r - 1 - ln r = .094535, .193147, .004690, .056675, 0 -> mean .0698094
    assert m["approx_kl"].item() == pytest.approx(0.0698094, abs=1e-6)


def test_dr_grpo_aggregation_needs_constant():
    with pytest.raises(ValueError, match="seq_sum_norm_constant"):
        policy_loss(_logprobs(), OLD, ADV, MASK, LossConfig(aggregation="seq_mean_token_sum_norm"))


def test_token_gradient_by_hand():
    # seq_mean_token_mean: d/dlp of (1/2)(1/|o|)(-A r) = -A r / (2 |o|) where unclipped, 0 where clipped
    lp = _logprobs()
    policy_loss(lp, OLD, ADV, MASK, LossConfig())[0].backward()
    expected = torch.tensor([[0.0, -0.5 / 4, 0.0], [2 * 1.1 / 6, 0.0, 2 * 1.0 / 6]])
    torch.testing.assert_close(lp.grad, expected)


def test_clip_higher():
    # clip_high .28: the r=1.5, A=1 token becomes -1.28; token mean (-1.28 - .5 + 2.2 + 1.6 + 2) / 5
    loss, m = policy_loss(_logprobs(), OLD, ADV, MASK, LossConfig(aggregation="token_mean", clip_high=0.28))
    assert loss.item() == pytest.approx(0.804, abs=1e-6)


def test_gspo_sequence_ratio_value_and_gradient():
    # s0 = exp(mean(ln 1.5, ln .5)) = sqrt(.75) = .866025 (A=1, r < 1 unclipped) -> -.866025
    # s1 = (1.1 * .7 * 1) ** (1/3) = .916566 < .95 with A=-2 -> clipped: max(1.83313, 1.9) = 1.9
    cfg = LossConfig(ratio_level="sequence", clip_low=0.05, clip_high=0.05)
    lp = _logprobs()
    loss, m = policy_loss(lp, OLD, ADV, MASK, cfg)
    assert loss.item() == pytest.approx((-0.866025 + 1.9) / 2, abs=1e-6)
    loss.backward()
    # d/dlp_t of -(1/2) s0 = -(1/2) s0 / |o_0| on both tokens of seq 0; seq 1 is clipped
    g = 0.866025 / 4
    torch.testing.assert_close(lp.grad, torch.tensor([[-g, -g, 0.0], [0.0, 0.0, 0.0]]), atol=1e-6, rtol=0)
    assert m["clip_frac_low"].item() == pytest.approx(0.6)  # all 3 tokens of seq 1, of 5
    assert m["seq_ratio_mean"].item() == pytest.approx((0.75 ** 0.5 + 0.77 ** (1 / 3)) / 2, abs=1e-6)
    assert m["seq_ratio_max"].item() == pytest.approx(0.77 ** (1 / 3), abs=1e-6)  # .916566
    assert "seq_ratio_mean" not in policy_loss(_logprobs(), OLD, ADV, MASK, LossConfig())[1]  # token ratios: none


def test_dual_clip_caps_negative_advantages():
    # r = 4 everywhere, A = [1, -2]: pg = [max(-4, -1.2), max(8, 2.4)] = [-1.2, 8]; dual c=3 caps 8 at 6
    log_ratio = torch.full((2, 1), LN(4.0))
    mask = torch.ones(2, 1)
    old = torch.zeros(2, 1)
    plain, _ = policy_loss(_logprobs(log_ratio, old), old, ADV, mask, LossConfig(aggregation="token_mean"))
    lp = _logprobs(log_ratio, old)
    dual, m = policy_loss(lp, old, ADV, mask, LossConfig(aggregation="token_mean", dual_clip_c=3.0))
    assert plain.item() == pytest.approx(3.4)
    assert dual.item() == pytest.approx(2.4)
    assert m["dual_clip_frac"].item() == pytest.approx(0.5)
    dual.backward()
    assert torch.equal(lp.grad, torch.zeros(2, 1))  # both tokens sit on a clip bound


def test_truncated_importance_sampling_and_mismatch_metrics():
    # ratio 1, A = 1 -> pg = -1 per token; old - rollout = [ln 3, ln .5] -> weights min(., 2) = [2, .5]
    old = torch.tensor([[-1.0, -2.0]])
    rollout = old - torch.tensor([[LN(3.0), LN(0.5)]])
    args = (old.clone().requires_grad_(), old, torch.tensor([1.0]), torch.ones(1, 2))
    loss, m = policy_loss(*args, LossConfig(tis_cap=2.0), rollout_logprobs=rollout)
    assert loss.item() == pytest.approx(-1.25)  # (-2 - .5) / 2
    assert m["tis_clip_frac"].item() == pytest.approx(0.5)
    assert m["tis_weight_mean"].item() == pytest.approx(1.25)
    assert m["mismatch_abs_diff"].item() == pytest.approx((1.098612 + 0.693147) / 2, abs=1e-6)
    assert m["mismatch_ratio_max"].item() == pytest.approx(3.0)
    # k3 with log r = old - rollout: (3 - 1 - 1.098612 + .5 - 1 + .693147) / 2
    assert m["mismatch_kl"].item() == pytest.approx(0.5472675, abs=1e-6)
    # without a cap the rollout logprobs only feed metrics
    uncorrected, m2 = policy_loss(*args, LossConfig(), rollout_logprobs=rollout)
    assert uncorrected.item() == pytest.approx(-1.0)
    assert "tis_weight_mean" not in m2 and m2["mismatch_ratio_max"].item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="rollout_logprobs"):
        policy_loss(*args, LossConfig(tis_cap=2.0))


# lp - ref = [ln 2, -ln 2]: k1 = +-.693147; k2 = .240227 each; k3 = e^-d + d - 1 = .193147, .306853
@pytest.mark.parametrize("kind, per_token, mean", [
    ("k1", [0.693147, -0.693147], 0.0),
    ("k2", [0.240227, 0.240227], 0.240227),
    ("k3", [0.193147, 0.306853], 0.25),
])
def test_kl_estimators(kind, per_token, mean):
    lp = torch.tensor([[-1.0, -1.0]])
    ref = lp - torch.tensor([[LN(2.0), -LN(2.0)]])
    torch.testing.assert_close(kl_estimate(lp, ref, kind), torch.tensor([per_token]), atol=1e-6, rtol=0)
    # with A = 0 and r = 1 the loss is exactly beta * mean KL
    loss, m = policy_loss(lp.clone().requires_grad_(), lp, torch.zeros(1), torch.ones(1, 2),
                          LossConfig(kl_beta=0.1, kl_estimator=kind), ref_logprobs=ref)
    assert loss.item() == pytest.approx(0.1 * mean, abs=1e-7)
    assert m["kl_ref"].item() == pytest.approx(mean, abs=1e-6)


def test_entropy_bonus_and_entropy_from_logits():
    # uniform over 2: ln 2 = .693147; probs [.25, .75]: -(.25 ln .25 + .75 ln .75) = .562335
    logits = torch.tensor([[[0.0, 0.0], [0.0, LN(3.0)]]], requires_grad=True)
    ent = entropy_from_logits(logits)
    torch.testing.assert_close(ent, torch.tensor([[0.693147, 0.562335]]), atol=1e-6, rtol=0)
    lp = torch.tensor([[-1.0, -1.0]])
    loss, m = policy_loss(lp.clone().requires_grad_(), lp, torch.zeros(1), torch.ones(1, 2),
                          LossConfig(entropy_coef=0.01), entropy=ent)
    assert loss.item() == pytest.approx(-0.01 * (0.693147 + 0.562335) / 2, abs=1e-7)
    assert m["entropy"].item() == pytest.approx((0.693147 + 0.562335) / 2, abs=1e-6)
    loss.backward()  # the bonus pushes the peaked position's logits towards uniform
    assert logits.grad[0, 1, 1] > 0 and logits.grad[0, 0].abs().max() < 1e-7


def test_gradient_only_through_response_logprobs():
    torch.manual_seed(0)
    lp = torch.randn(3, 5).clamp(max=-0.1)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0]])
    lp[mask == 0] = -torch.inf  # padding garbage must not poison the gradient
    lp.requires_grad_()
    others = {k: (torch.randn(3, 5) - 2).requires_grad_() for k in ("old", "ref", "rollout")}
    adv = torch.randn(3, requires_grad=True)
    cfg = LossConfig(kl_beta=0.1, kl_estimator="k2", tis_cap=2.0, dual_clip_c=3.0)
    loss, _ = policy_loss(lp, others["old"], adv, mask, cfg, ref_logprobs=others["ref"],
                          rollout_logprobs=others["rollout"])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert torch.equal(lp.grad[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert (lp.grad[mask == 1] != 0).all()  # the KL term reaches every response token
    assert adv.grad is None and all(t.grad is None for t in others.values())


@pytest.mark.parametrize("cfg", [
    LossConfig(),
    LossConfig(aggregation="token_mean", clip_high=0.28, dual_clip_c=3.0),
    LossConfig(aggregation="seq_mean_token_sum_norm", seq_sum_norm_constant=6.0, kl_beta=0.05),
    LossConfig(ratio_level="sequence", clip_low=3e-4, clip_high=4e-4, tis_cap=2.0, entropy_coef=0.01),
], ids=["grpo", "dapo", "drgrpo", "gspo_tis"])
def test_micro_batch_losses_sum_to_full_batch(cfg):
    g = torch.Generator().manual_seed(1)
    B, T = 7, 6
    mask = (torch.rand(B, T, generator=g) > 0.3).long()
    mask[:, 0] = 0
    mask[0, 1] = 1
    old = -torch.rand(B, T, generator=g) * 3
    lp = (old + 0.3 * torch.randn(B, T, generator=g)).requires_grad_()
    ref = old + 0.2 * torch.randn(B, T, generator=g)
    rollout = old + 0.2 * torch.randn(B, T, generator=g)
    ent = torch.rand(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    kw = dict(ref_logprobs=ref, rollout_logprobs=rollout, entropy=ent)
    full, full_m = policy_loss(lp, old, adv, mask, cfg, **kw)
    (full_grad,) = torch.autograd.grad(full, lp)

    total, grads, metric_sums = 0.0, [], {}
    for rows in (slice(0, 3), slice(3, 5), slice(5, 7)):  # uneven micro-batches
        part, m = policy_loss(lp[rows], old[rows], adv[rows], mask[rows], cfg,
                              **{k: v[rows] for k, v in kw.items()},
                              num_sequences=B, num_tokens=mask.sum())
        grads.append(torch.autograd.grad(part, lp)[0])
        total = total + part
        for k, v in m.items():
            reduce = torch.maximum if k.endswith("_max") else torch.add
            metric_sums[k] = reduce(metric_sums[k], v) if k in metric_sums else v
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(sum(grads), full_grad)
    assert metric_sums.keys() == full_m.keys()
    for k in full_m:
        torch.testing.assert_close(metric_sums[k], full_m[k], msg=k)


def test_sft_loss_token_mean_and_micro_batches():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -torch.inf]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, m = sft_loss(lp, mask)
    assert loss.item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert m["sft_nll"].item() == pytest.approx(2.0)
    parts = [sft_loss(lp[i:i + 1], mask[i:i + 1], num_tokens=3)[0] for i in range(2)]
    assert (parts[0] + parts[1]).item() == pytest.approx(2.0)  # 3 / 3 + 3 / 3
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1 / 3, -1 / 3, 0.0], [-1 / 3, 0.0, 0.0]]))


def test_loss_input_errors():
    lp = _logprobs()
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, OLD, ADV, MASK, LossConfig(kl_beta=0.1))
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(lp, OLD, ADV, MASK, LossConfig(entropy_coef=0.01))
    with pytest.raises(ValueError, match="advantages must be \\[B\\]"):
        policy_loss(lp, OLD, ADV[:1], MASK, LossConfig())
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        policy_loss(lp, OLD[:, :2], ADV, MASK, LossConfig())


def test_no_old_logprobs_is_the_separate_pass_of_the_same_weights():
    """``old_logprobs=None`` (one update per batch) gives the loss, gradient and metrics of a
    separate no-grad pass of the same weights; a moved old policy (negative control) does not."""
    g = torch.Generator().manual_seed(2)
    lp = (-torch.rand(4, 6, generator=g) * 3).requires_grad_()
    mask = (torch.rand(4, 6, generator=g) > 0.3).long()
    adv, rollout = torch.randn(4, generator=g), lp.detach() + 0.1 * torch.randn(4, 6, generator=g)
    cfg = LossConfig(clip_high=0.28, tis_cap=2.0)
    runs = {}
    for name, old in (("shortcut", None), ("separate", lp.detach().clone()), ("moved", lp.detach() + 0.3)):
        loss, m = policy_loss(lp, old, adv, mask, cfg, rollout_logprobs=rollout)
        runs[name] = (loss, torch.autograd.grad(loss, lp)[0], m)
    (l0, g0, m0), (l1, g1, m1), (l2, g2, _) = runs["shortcut"], runs["separate"], runs["moved"]
    torch.testing.assert_close(l0, l1)
    torch.testing.assert_close(g0, g1)
    for k in m1:
        torch.testing.assert_close(m0[k], m1[k], msg=k)
    assert m0["approx_kl"] == 0 and m0["ratio_mean"].item() == pytest.approx(1.0)
    assert (g2 - g1).abs().max() > 1e-3


def test_micro_batches_by_length_pad_each_to_its_own_longest_row():
    from igrpo_megatron.models.logprobs import micro_batches_by_length

    lengths = torch.tensor([5, 30, 0, 12, 29, 6])
    groups = micro_batches_by_length(lengths, 2)
    assert [(r.tolist(), w) for r, w in groups] == [([1, 4], 30), ([3, 5], 12), ([0, 2], 5)]
    budget = micro_batches_by_length(lengths, 2, max_tokens=36)
    assert [(r.tolist(), w) for r, w in budget] == [([1], 30), ([4], 29), ([3, 5, 0], 12), ([2], 1)]
    assert sorted(i for r, _ in budget for i in r.tolist()) == list(range(6))  # every row once
