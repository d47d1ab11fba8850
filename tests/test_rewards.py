"""Answer extraction, the format reward and math-verify accuracy (in-process, no pool)."""
import pytest

from igrpo_megatron.rewards import extract_answer, format_reward, last_boxed
from igrpo_megatron.rewards.math_verify_reward import accuracy


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # the last box wins
    ("nested \\boxed{\\{1, \\{2\\}\\}} and \\boxed{x^{2^{3}}}", "x^{2^{3}}"),  # balanced braces
    ("\\fbox{7}", "7"),
    ("\\boxed {5}", "5"),
    ("\\boxed{3} then cut off \\boxed{4", "3"),  # an unclosed box does not count
    ("\\boxed{}", None),
    ("<think>t</think><answer> 12 </answer>", "12"),
    ("<answer>1</answer> <answer>2</answer>", "2"),
    ("<think>t</think><answer>so \\boxed{9}</answer>", "9"),
    ("<think>\\boxed{3}</think><answer>5</answer>", "3"),  # any box beats the tag (documented order)
    ("<answer>unclosed 7", None),
    ("<answer>  </answer>", None),
    ("no answer here 17", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_is_what_math_solutions_use():
    solution = "We get $\\frac{1}{2}$, so the answer is $\\boxed{\\dfrac{1}{2}}$."
    assert last_boxed(solution) == "\\dfrac{1}{2}"


@pytest.mark.parametrize("text, expected", [
    ("<think>7 + 12 = 19</think><answer>19</answer>", 1.0),
    ("  <think>\nreason\n</think>\n\n<answer>\n\\boxed{19}\n</answer>\n", 1.0),
    ("<think></think><answer>19</answer>", 1.0),  # an empty monologue is still the format
    ("<answer>19</answer>", 0.0),  # no think block
    ("<think>a</think><answer> </answer>", 0.0),  # blank answer
    ("<think>a</think>text<answer>19</answer>", 0.0),  # text between the blocks
    ("<think>a</think><answer>19</answer> trailing", 0.0),
    ("<think>a<think>b</think><answer>19</answer>", 0.0),  # nested think
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # two answers
    ("<think>a</think><answer>19", 0.0),  # truncated
    ("<answer>19</answer><think>a</think>", 0.0),  # wrong order
])
def test_format_reward(text, expected):
    assert format_reward(text) == expected


def test_format_reward_with_a_prefilled_think_tag():
    # R1-distill templates end the prompt with "<think>"; the completion starts inside it.
    assert format_reward("reason</think><answer>19</answer>", think_prefilled=True) == 1.0
    assert format_reward("reason</think><answer>19</answer>") == 0.0
    assert format_reward("<think>reason</think><answer>19</answer>", think_prefilled=True) == 0.0  # two opens


def test_format_reward_is_linear_on_long_unclosed_answers():
    # A quadratic pattern would take minutes here; this is a hang guard, not a timing assertion.
    text = "<think>" + "x" * 20000 + "</think><answer>" + "a " * 20000
    assert format_reward(text) == 0.0


@pytest.mark.parametrize("gold, pred", [
    ("\\frac{1}{2}", "0.5"), ("\\frac{1}{2}", "1/2"), ("\\frac{1}{2}", "\\dfrac{1}{2}"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"), ("\\{1,2,3\\}", "1,2,3"),
    ("2\\sqrt{3}", "\\sqrt{12}"), ("3/4", "75\\%"), ("x^2+2x+1", "(x+1)^2"),
    ("(0,1]", "(0,1]"), ("-7", "x = -7"), ("19", "19.0"), ("\\text{(C)}", "C"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
])
def test_equivalent_forms_are_accepted(gold, pred):
    assert accuracy(f"<think>t</think><answer>\\boxed{{{pred}}}</answer>", gold) == 1.0


@pytest.mark.parametrize("gold, pred", [
    ("\\frac{1}{2}", "0.25"), ("\\frac{1}{2}", "2"), ("\\{1,2,3\\}", "\\{1,2\\}"), ("2\\sqrt{3}", "3\\sqrt{2}"),
    ("(0,1]", "[0,1]"), ("-7", "7"), ("19", "20"), ("\\text{(C)}", "D"), ("x^2+2x+1", "x^2+1"),
])
def test_wrong_answers_are_rejected(gold, pred):
    assert accuracy(f"\\boxed{{{pred}}}", gold) == 0.0


def test_no_extracted_answer_scores_zero_even_if_the_number_appears():
    assert accuracy("The answer is 19.", "19") == 0.0
    assert accuracy("<answer>19</answer>", "19") == 1.0
