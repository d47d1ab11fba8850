"""The trainer's components on a real Megatron policy under torchrun: the Checkpointer's save
schedule, keep-last and resume, and ``Trainer.update`` logging the mean over its optimizer steps."""
import os

import pytest

from torchrun_util import REPO, run_torchrun

WORKER = os.path.join(REPO, "tests", "dist", "trainer_components.py")


@pytest.fixture(scope="module")
def figures(tiny_qwen2, tmp_path_factory):
    out = run_torchrun(WORKER, 1, [tiny_qwen2, str(tmp_path_factory.mktemp("components"))], timeout=600)
    return dict(line.split(" ", 2)[1:] for line in out.splitlines() if line.startswith("CHECK "))


def test_checkpointer_saves_on_schedule_and_the_last_step(figures):
    assert figures["saved_every2"] == "2,4,5"  # every 2 steps, and the run's last step
    assert figures["kept_every2"] == "4,5"  # keep_last=2
    assert figures["saved_every10"] == "5"  # the schedule never fires; the last step still saves
    assert figures["saved_every0"] == "none" and figures["kept_every0"] == "none"  # saving off


def test_checkpointer_resume_returns_the_position_and_loads_the_weights(figures):
    assert figures["resumed_step"] == "5" and figures["resumed_weight_version"] == "15"
    assert figures["resumed_consumed"] == "15"  # 5 steps x 3 prompts
    assert figures["resumed_data_state_matches"] == "1"
    assert float(figures["resumed_weights_diff"]) == 0.0  # the +1 added after the save is gone
    assert figures["resume_off_is_none"] == "1"  # train.resume=false starts afresh


def test_update_logs_the_mean_over_mini_batches(figures):
    """The first mini-batch is on-policy (KL to the old policy 0), the second trains a policy the
    first moved (KL > 0): the step logs their mean, not the last one's figure."""
    assert figures["update_steps"] == "2"
    kl0, kl1, logged = (float(figures[k]) for k in ("update_kl_0", "update_kl_1", "update_kl_logged"))
    assert abs(kl0) < 1e-7 < kl1
    assert logged == pytest.approx((kl0 + kl1) / 2, rel=1e-6)
