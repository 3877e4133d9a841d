import pytest

from tunelab.config import PRESETS, build_config, load_config, parse_set_options, save_config
from tunelab.errors import UserError


def test_preset_fills_only_unset_values():
    cfg = build_config({"task": "sft", "train": {"preset": "fast", "learning_rate": 1e-5}})
    assert cfg.train.learning_rate == 1e-5  # explicit value wins
    assert cfg.train.epochs == PRESETS["fast"]["epochs"]
    assert cfg.train.max_length == PRESETS["fast"]["max_length"]


def test_balanced_is_default_and_presets_differ():
    cfg = build_config({"task": "sft"})
    assert cfg.train.preset == "balanced"
    mem = build_config({"task": "sft", "train": {"preset": "memory_efficient"}})
    assert mem.train.gradient_checkpointing is True and mem.train.batch_size < cfg.train.batch_size
    assert build_config({"task": "sft", "train": {"preset": "quality"}}).train.neftune_alpha > 0


def test_overrides_beat_yaml_and_set_parses_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: sft\ntrain:\n  epochs: 3\nlora:\n  r: 4\n")
    cfg = load_config(path, {"train.epochs": 1, **parse_set_options(["lora.r=8", "lora.target_modules=[q_proj, v_proj]",
                                                                     "task.system_prompt=Be brief."])})
    assert cfg.train.epochs == 1 and cfg.lora.r == 8
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.task.system_prompt == "Be brief."


def test_unknown_key_names_key_with_suggestion():
    with pytest.raises(UserError, match=r"unknown key `train.learning_rat`.*did you mean `learning_rate`"):
        build_config({"task": "sft", "train": {"learning_rat": 1e-4}})


def test_unknown_task_key_and_bad_values_are_user_errors():
    with pytest.raises(UserError, match=r"task.formatt"):
        build_config({"task": {"name": "sft", "formatt": "x"}})
    with pytest.raises(UserError, match=r"unknown task `sftt`.*did you mean `sft`"):
        build_config({"task": "sftt"})
    with pytest.raises(UserError, match=r"unknown preset `fastt`"):
        build_config({"task": "sft", "train": {"preset": "fastt"}})
    with pytest.raises(UserError, match=r"lora.r"):
        build_config({"task": "sft", "lora": {"r": 0}})
    with pytest.raises(UserError, match="missing `task`"):
        build_config({})


def test_config_round_trips_through_yaml(tmp_path):
    cfg = build_config({"task": {"name": "sft", "category_system_prompts": {"love": "You are kind."}},
                        "train": {"preset": "quality"}})
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.model_dump() == cfg.model_dump()
    assert again.task.category_system_prompts == {"love": "You are kind."}
