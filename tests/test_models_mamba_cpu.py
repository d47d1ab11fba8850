"""The pure-torch Mamba-2 pieces (igrpo_megatron.models.cpu_mamba) against their definitions."""
import pytest
import torch
import torch.nn.functional as F

from igrpo_megatron.models.cpu_mamba import GatedRMSNorm, ssd_chunk_scan


def sequential_scan(x, dt, A, B, C, D, z, dt_bias, initial):
    """The recurrence itself, one step at a time in fp64: the definition the chunked scan must meet."""
    x, dt, A, B, C, D, z, dt_bias = (t.double() for t in (x, dt, A, B, C, D, z, dt_bias))
    rep = x.shape[2] // B.shape[2]
    B, C = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    dt = F.softplus(dt + dt_bias)
    state, ys = initial.double(), []
    for t in range(x.shape[1]):
        state = state * torch.exp(dt[:, t] * A)[..., None, None] + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None]
        ys.append((state * C[:, t, :, None]).sum(-1))
    y = (torch.stack(ys, 1) + x * D[:, None]) * F.silu(z)
    return y, state


def inputs(length, b=2, h=4, p=8, g=2, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(x=r(b, length, h, p), dt=r(b, length, h), A=-torch.rand(h, generator=gen) * 4 - 0.5,
                B=r(b, length, g, n), C=r(b, length, g, n), D=r(h), z=r(b, length, h, p), dt_bias=r(h) - 1,
                initial=r(b, h, p, n))


@pytest.mark.parametrize("length,chunk", [(24, 8), (29, 8), (5, 8), (40, 16)])
def test_chunked_scan_equals_the_recurrence(length, chunk):
    i = inputs(length)
    want_y, want_state = sequential_scan(**i)
    y, state = ssd_chunk_scan(i["x"], i["dt"], i["A"], i["B"], i["C"], chunk, D=i["D"], z=i["z"],
                              dt_bias=i["dt_bias"], dt_softplus=True, initial_states=i["initial"],
                              return_final_states=True)
    assert (y.double() - want_y).abs().max() < 1e-5 * want_y.abs().max()
    assert (state.double() - want_state).abs().max() < 1e-5 * want_state.abs().max()


def test_chunked_scan_gradients_equal_the_recurrence():
    i = inputs(19, seed=1)
    leaves = {k: v.clone().requires_grad_() for k, v in i.items() if k != "initial"}
    y = ssd_chunk_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], 8, D=leaves["D"],
                       z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True, initial_states=i["initial"])
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad((y * weights).sum(), list(leaves.values()))
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    ref_y, _ = sequential_scan(**ref_leaves, initial=i["initial"])
    want = torch.autograd.grad((ref_y * weights.double()).sum(), list(ref_leaves.values()))
    for name, a, b in zip(leaves, got, want):
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max(), name


def test_dt_limit_clamps_the_step():
    i = inputs(16)
    args = (i["x"], i["dt"], i["A"], i["B"], i["C"], 8)
    free = ssd_chunk_scan(*args, dt_bias=i["dt_bias"] - 6, dt_softplus=True)
    clamped = ssd_chunk_scan(*args, dt_bias=i["dt_bias"] - 6, dt_softplus=True, dt_limit=(0.01, float("inf")))
    assert (free - clamped).abs().max() > 1e-2  # dt ~ 1e-3 here, so a floor of 0.01 changes the output


def test_gated_rms_norm_gates_before_a_per_group_norm():
    gen = torch.Generator().manual_seed(0)
    x, z = torch.randn(3, 5, 32, generator=gen), torch.randn(3, 5, 32, generator=gen)
    norm = GatedRMSNorm(32, eps=1e-5, group_size=8)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(32, generator=gen))
    gated = (x * F.silu(z)).reshape(3, 5, 4, 8)
    want = (gated / (gated.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()).reshape(3, 5, 32) * norm.weight
    assert (norm(x, z) - want).abs().max() < 1e-6
    # the two ways to get it wrong are far off
    whole = x * F.silu(z)
    assert (norm(x, z) - whole * torch.rsqrt(whole.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight).abs().max() > 0.1
    per_group = x.reshape(3, 5, 4, 8)
    norm_first = (per_group * torch.rsqrt(per_group.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(3, 5, 32)
    assert (norm(x, z) - norm_first * norm.weight * F.silu(z)).abs().max() > 0.1
