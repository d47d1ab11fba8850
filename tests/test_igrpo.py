"""The iGRPO wrapper's pieces: draft selection, prompts, draft fitting, budget, dynamic sampling,
DAPO's overlong shaping."""
import pytest
import torch

from igrpo_megatron.algorithms import (
    SYSTEM_PROMPT,
    build_prompt_messages,
    build_refinement_messages,
    dynamic_sampling_mask,
    fit_draft,
    refinement_prompt_ids,
    select_best_drafts,
)
from igrpo_megatron.algorithms.draft_selection import select_drafts
from igrpo_megatron.algorithms.igrpo import DEFAULT_TEMPLATE
from igrpo_megatron.algorithms.shaping import soft_overlong_penalty


def test_select_best_drafts_ties_and_all_zero():
    rewards = torch.tensor([
        [0.0, 1.0, 1.0, 0.0],  # tie between 1 and 2 -> the earliest, 1
        [0.0, 0.0, 0.0, 0.0],  # all wrong -> draft 0, reported
        [0.5, 2.0, 0.3, 2.0],  # tie at 2.0 -> 1
        [1.0, 1.0, 1.0, 1.0],  # all equal but rewarded -> 0, not all_zero
        [0.0, 0.0, 0.0, 2.0],  # unique max last
    ])
    indices, all_zero = select_best_drafts(rewards)
    assert indices.tolist() == [1, 0, 1, 0, 3]
    assert all_zero.tolist() == [False, True, False, False, False]
    assert indices.dtype == torch.int64


def test_ties_go_to_the_accurate_draft_when_accuracy_is_given():
    # accuracy + format: draft 0 is wrong but formatted, draft 2 right but unformatted: both score 1
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [2.0, 1.0, 2.0, 2.0]])
    accuracy = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    assert select_best_drafts(rewards)[0].tolist() == [0, 0]
    assert select_best_drafts(rewards, accuracy)[0].tolist() == [2, 0]  # row 2: all tied ones right -> first
    with pytest.raises(ValueError, match="shape of rewards"):
        select_best_drafts(rewards, accuracy[:, :2])


def test_select_best_drafts_rejects_nan_and_bad_shape():
    with pytest.raises(ValueError, match="NaN"):
        select_best_drafts(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="num_prompts, num_drafts"):
        select_best_drafts(torch.ones(4))


def test_best_of_n_matches_the_papers_proposition():
    # binary rewards, i.i.d. drafts with success p: E[R(best)] = 1 - (1 - p)^N = 1 - .7^4 = .7599
    g = torch.Generator().manual_seed(0)
    rewards = (torch.rand(20000, 4, generator=g) < 0.3).float()
    indices, all_zero = select_best_drafts(rewards)
    best = rewards.gather(1, indices[:, None]).squeeze(1)
    assert best.mean().item() == pytest.approx(0.7599, abs=0.01)  # ~3 standard errors
    assert all_zero.float().mean().item() == pytest.approx(0.2401, abs=0.01)
    assert torch.equal(best == 0, all_zero)


def test_dynamic_sampling_drops_zero_variance_groups():
    rewards = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [2.0, 2.0, 2.0], [0.3, 0.3, 0.3], [0.3, 0.3, 0.31]])
    assert dynamic_sampling_mask(rewards).tolist() == [False, True, False, False, True]


def test_draft_selection_rules_on_hand_made_rewards():
    # reward = accuracy + format, 4 drafts per prompt
    accuracy = torch.tensor([[0.0, 1.0, 0.0, 1.0],   # formatted: 0 (r 1), 1 (r 2), 3 (r 2) -> worst 0
                             [1.0, 0.0, 0.0, 0.0],   # none formatted -> falls back to the best: 0
                             [1.0, 0.0, 1.0, 0.0],   # formatted 1 (r 1), 2 (r 2), 3 (r 1) -> worst 1 (first)
                             [1.0, 0.0, 0.0, 1.0]])  # formatted 0, 3 (both r 2) -> worst 0; best 0 as well
    fmt = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    rewards = accuracy + fmt
    g = torch.Generator().manual_seed(0)
    assert select_drafts("best", rewards, accuracy, fmt, g).tolist() == [1, 0, 2, 0]
    assert select_drafts("worst_formatted", rewards, accuracy, fmt, g).tolist() == [0, 0, 1, 0]
    picks = torch.stack([select_drafts("random", rewards, accuracy, fmt, torch.Generator().manual_seed(s))
                         for s in range(400)])
    assert picks.min() == 0 and picks.max() == 3  # every draft gets picked
    assert picks.float().mean().item() == pytest.approx(1.5, abs=0.15)  # uniform over 0..3
    seeded = [select_drafts("random", rewards, accuracy, fmt, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*seeded)  # same seed, same picks: a resumed run repeats them
    with pytest.raises(ValueError, match="one shape"):
        select_drafts("best", rewards, accuracy[:, :2], fmt, g)


def test_soft_overlong_penalty_hand_computed():
    # L_max = 20, L_cache = 4: free up to 16 tokens, then (16 - |y|) / 4, -1 beyond 20
    lengths = torch.tensor([0, 16, 17, 18, 20, 21, 100])
    assert soft_overlong_penalty(lengths, 20, 4).tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]
    # DAPO's own setting: 16,384 free, 4,096 of cache; 18,432 tokens is half way down the ramp
    assert soft_overlong_penalty(torch.tensor([18432]), 20480, 4096).tolist() == [-0.5]
    with pytest.raises(ValueError, match="cache_len"):
        soft_overlong_penalty(lengths, 4, 8)


def test_prompt_messages_wording_and_draft_delimiting():
    stage1 = build_prompt_messages("What is 2+3?")
    assert stage1 == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "What is 2+3?"}]
    for needle in ("<think>", "</think>", "<answer>", "</answer>", "guidance", "draft"):
        assert needle in SYSTEM_PROMPT

    draft = "<think> 2+3=6 </think> <answer> 6 </answer>"
    system, user = build_refinement_messages("What is 2+3?", draft)
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    text = user["content"]
    assert text.startswith("What is 2+3?")  # q' = q followed by the draft
    assert f"<draft>\n{draft}\n</draft>" in text and text.count("<draft>") == 1
    custom = build_refinement_messages("q", "d", system_prompt="Be brief.")
    assert custom[0]["content"] == "Be brief."


def test_fit_draft_keeps_head_and_tail():
    draft = list(range(100))
    marker = [-1, -1]
    assert fit_draft(draft, prompt_len=30, max_prompt_tokens=200, elision_ids=marker) == draft
    # budget 60 - 30 = 30, room 28 for text: head int(28 * .25) = 7, tail 21
    out = fit_draft(draft, prompt_len=30, max_prompt_tokens=60, elision_ids=marker)
    assert out == list(range(7)) + marker + list(range(79, 100))
    # max_draft_tokens tightens the budget to 10: room 8, head 2, tail 6
    out = fit_draft(draft, prompt_len=30, max_prompt_tokens=200, elision_ids=marker, max_draft_tokens=10)
    assert out == [0, 1, -1, -1, 94, 95, 96, 97, 98, 99]
    with pytest.raises(ValueError, match="takes 59 of 60 tokens"):
        fit_draft(draft, prompt_len=59, max_prompt_tokens=60, elision_ids=marker)


def _char_encode(text):  # a character-level "tokenizer": one id per character
    return [ord(c) for c in text]


def _render(messages):
    return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"


def test_refinement_prompt_ids_splices_the_sampled_draft_tokens():
    question = "Compute 17*3."
    short = "<think> 17*3 = 51 </think> <answer> 51 </answer>"
    ids = refinement_prompt_ids(question, _char_encode(short), render=_render, encode=_char_encode,
                                max_prompt_tokens=1000)
    assert "".join(map(chr, ids)) == _render(build_refinement_messages(question, short))

    budget = len(_render(build_refinement_messages(question, ""))) + 200  # room for 200 draft chars
    long = "<think> " + "abcdefghij" * 50 + " so 17*3 = 51 </think> <answer> 51 </answer>"
    ids = refinement_prompt_ids(question, _char_encode(long), render=_render, encode=_char_encode,
                                max_prompt_tokens=budget)
    assert len(ids) == budget  # filled exactly
    text = "".join(map(chr, ids))
    head, rest = text.split("<draft>\n")[1].split(DEFAULT_TEMPLATE.elision)
    assert long.startswith(head) and len(head) > 0
    kept_tail = rest.split("\n</draft>")[0]
    assert long.endswith(kept_tail) and kept_tail.endswith("<answer> 51 </answer>")
    room = 200 - len(DEFAULT_TEMPLATE.elision)
    assert (len(head), len(kept_tail)) == (room // 4, room - room // 4)
    assert text.endswith("improves on the draft.<|assistant|>")


def test_refinement_prompt_ids_with_a_real_chat_tokenizer(tmp_path):
    from igrpo_megatron.demo.tiny import make_tokenizer

    tok = make_tokenizer(str(tmp_path))

    def render(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(text):
        return tok.encode(text, add_special_tokens=False)

    question = "What is 12 * 7?"
    draft = "<think>12 * 7 = 74</think> <answer>74</answer>"
    ids = refinement_prompt_ids(question, encode(draft), render=render, encode=encode, max_prompt_tokens=4096)
    assert tok.decode(ids) == render(build_refinement_messages(question, draft))
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # special tokens survive the split

    long_draft = "<think>" + " 12 * 7 = 84." * 200 + "</think> <answer>84</answer>"
    full = len(encode(render(build_refinement_messages(question, ""))))
    ids = refinement_prompt_ids(question, encode(long_draft), render=render, encode=encode,
                                max_prompt_tokens=full + 120)
    assert len(ids) == full + 120  # the budget is met exactly
    text = tok.decode(ids)
    assert "middle of the draft omitted" in text and "<answer>84</answer>\n</draft>" in text


def test_refinement_prompt_ids_rejects_a_template_that_rewrites_content():
    with pytest.raises(ValueError, match="placeholder"):
        refinement_prompt_ids("q", [1, 2], render=lambda m: "no content kept", encode=_char_encode,
                              max_prompt_tokens=100)
