"""What a chat template does is read from the template: an opened ``<think>`` in the generation
prompt (DeepSeek-R1 distills) and a missing system role. Templates are put on the tiny tokenizer."""
import pytest

from igrpo_megatron.algorithms.igrpo import SYSTEM_PROMPT, build_prompt_messages
from igrpo_megatron.config import RewardConfig
from igrpo_megatron.data.chat import format_prompt, has_system_role, render, think_prefilled
from igrpo_megatron.rewards import RewardItem, make_reward

# DeepSeek-R1-Distill-Qwen's published template, its tool-call branches left out: the system text
# goes first, user and assistant turns are tagged, and the generation prompt opens the monologue.
R1_DISTILL = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- endfor -%}"
    "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
# Gemma-style: a system turn is refused outright.
NO_SYSTEM_RAISES = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ message['role'] }}\n{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# A template that silently renders only user and assistant turns.
NO_SYSTEM_DROPS = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "[{{ message['role'] }}] {{ message['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.fixture
def tok(tmp_path):
    from igrpo_megatron.demo.tiny import make_tokenizer

    return make_tokenizer(str(tmp_path / "tok"))


def _with(tok, template):
    tok.chat_template = template
    has_system_role.cache_clear()
    return tok


def test_r1_distill_template_is_detected_as_think_prefilled(tok):
    assert think_prefilled(tok) is False  # the tiny tokenizer's ChatML: the model opens <think> itself
    assert think_prefilled(_with(tok, R1_DISTILL)) is True
    assert render(tok, build_prompt_messages("What is 2+3?")).endswith("<｜Assistant｜><think>\n")


def test_auto_think_prefill_makes_the_format_reward_see_the_prefilled_monologue(tok):
    completion = "2 plus 3 is 5</think><answer>5</answer>"  # the model continues after the template's <think>
    item = RewardItem(completion, "5", "What is 2+3?")
    with make_reward(RewardConfig(num_workers=1), tokenizer=_with(tok, R1_DISTILL)) as reward:
        prefilled = reward.score([item])[0]
    with make_reward(RewardConfig(num_workers=1, think_prefilled=False)) as reward:
        forced_off = reward.score([item])[0]  # negative control: the flag users forgot
    assert (prefilled.format, prefilled.accuracy, prefilled.total) == (1.0, 1.0, 2.0)
    assert forced_off.format == 0.0 and forced_off.total == 1.0


@pytest.mark.parametrize("template", [NO_SYSTEM_RAISES, NO_SYSTEM_DROPS], ids=["raises", "drops"])
def test_a_template_without_system_role_gets_the_instruction_in_the_user_turn(tok, template):
    _with(tok, template)
    assert not has_system_role(tok)
    text = render(tok, build_prompt_messages("What is 2+3?"))
    assert f"user\n{SYSTEM_PROMPT}\n\nWhat is 2+3?" in text or f"[user] {SYSTEM_PROMPT}\n\nWhat is 2+3?" in text
    assert text.count(SYSTEM_PROMPT) == 1
    assert format_prompt(tok, build_prompt_messages("q")) == tok.encode(
        render(tok, build_prompt_messages("q")), add_special_tokens=False)


def test_a_template_with_a_system_role_keeps_it(tok):
    assert has_system_role(tok)
    text = render(tok, build_prompt_messages("What is 2+3?"))
    assert f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>" in text
    assert "<|im_start|>user\nWhat is 2+3?<|im_end|>" in text


def test_prompt_wording_is_configurable(tok):
    messages = build_prompt_messages("What is 2+3?", "Be brief.", " Put the final answer in \\boxed{}.")
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "What is 2+3? Put the final answer in \\boxed{}."}]
    assert build_prompt_messages("q")[0]["content"] == SYSTEM_PROMPT  # the paper's prompt by default
