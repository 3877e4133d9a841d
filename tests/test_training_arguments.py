"""train.* config -> TrainingArguments: every schedule the user sets is honoured or refused, never dropped."""
from __future__ import annotations

import pytest
import torch

from tunelab.config import build_config
from tunelab.errors import UserError
from tunelab.models.hardware import Hardware
from tunelab.tasks import get_task
from tunelab.training.arguments import training_arguments
from tunelab.training.rundir import RunDir

CPU = Hardware(device="cpu", dtype=torch.float32, name="test CPU")


def arguments(tmp_path, has_eval=True, **train):
    config = build_config({"task": "sft", "train": {"preset": "fast", **train}})
    task = get_task("sft")(config)
    return training_arguments(config, RunDir(tmp_path), CPU, task, n_train=64, has_eval=has_eval)


@pytest.mark.parametrize("has_eval", [True, False])
def test_save_steps_and_eval_steps_are_both_honoured(tmp_path, has_eval):
    args = arguments(tmp_path, has_eval, eval_steps=5, save_steps=10)
    assert (args.save_strategy, args.save_steps) == ("steps", 10)
    if has_eval:
        assert (args.eval_strategy, args.eval_steps) == ("steps", 5)
        assert args.load_best_model_at_end
    else:
        assert args.eval_strategy == "no"


@pytest.mark.parametrize("train, every", [({"eval_steps": 4}, (4, 4)), ({"save_steps": 6}, (6, 6))])
def test_one_schedule_set_the_other_follows(tmp_path, train, every):
    args = arguments(tmp_path, **train)
    assert (args.eval_strategy, args.save_strategy) == ("steps", "steps")
    assert (args.eval_steps, args.save_steps) == every


def test_neither_set_evaluates_about_four_times_a_run_or_every_epoch_for_tiny_runs(tmp_path):
    args = arguments(tmp_path, max_steps=20)  # the loss curve gets eval points during training, not only at the end
    assert (args.eval_strategy, args.eval_steps, args.save_strategy, args.save_steps) == ("steps", 5, "steps", 5)
    args = arguments(tmp_path, epochs=2, batch_size=8)  # 64 rows / 8 = 8 steps an epoch, 16 in all
    assert (args.eval_steps, args.save_steps) == (4, 4)
    args = arguments(tmp_path, max_steps=5)
    assert (args.eval_strategy, args.save_strategy) == ("epoch", "epoch")


@pytest.mark.parametrize("eval_steps, save_steps, hint", [(4, 10, "save_steps: 8 or save_steps: 12"),
                                                          (4, 2, "save_steps: 4")])
def test_save_steps_not_a_multiple_of_eval_steps_is_a_user_error(tmp_path, eval_steps, save_steps, hint):
    with pytest.raises(UserError, match=rf"train.save_steps \({save_steps}\) must be a multiple of "
                                        rf"train.eval_steps \({eval_steps}\)") as error:
        arguments(tmp_path, eval_steps=eval_steps, save_steps=save_steps)
    assert hint in str(error.value)


def test_without_eval_data_any_save_steps_goes(tmp_path):
    args = arguments(tmp_path, has_eval=False, eval_steps=4, save_steps=10)
    assert (args.save_strategy, args.save_steps, args.eval_strategy) == ("steps", 10, "no")
