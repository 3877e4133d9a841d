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


# -- messages: one clear line naming the file (or the command line), key, line and column ---------------

def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("task: sft\ntrain:\n  epochs: 3\n    lr: 2\n")
    with pytest.raises(UserError, match=r"cfg.yaml: not valid YAML at line 4, column 7 \(mapping values are not allowed here\)"):
        load_config(path)
    path.write_text('task: sft\ndata:\n  train_path: "unclosed\n')
    with pytest.raises(UserError, match=r"cfg.yaml: not valid YAML at line 4, column 1 .*quoted scalar that starts at line 3, column 15"):
        load_config(path)
    path.write_text("task: sft\ntrain:\n\tepochs: 3\n")
    with pytest.raises(UserError, match=r"at line 3, column 1 .*indent with spaces, not tabs"):
        load_config(path)


def test_yaml_python_tags_are_refused_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "cfg.yaml"
    path.write_text(f'task: sft\nmodel: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(UserError, match=r"cfg.yaml: the YAML tag `!!python/object/apply:os.system` at line 2, column 8 "
                                        r"is not allowed"):
        load_config(path)
    assert not marker.exists()
    # --set values are parsed as YAML too: a tag stays inert text, and the config rejects it.
    assert parse_set_options([f"model.name_or_path=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_misspelled_task_key_gets_did_you_mean_from_the_task_plugin():
    with pytest.raises(UserError, match=r"unknown key `task.formatt` \(did you mean `format`\?\)"):
        build_config({"task": {"name": "sft", "formatt": "chat"}})
    with pytest.raises(UserError, match=r"unknown key `task.system_promt` \(did you mean `system_prompt`\?\)"):
        build_config({"task": "sft"}, {"task.system_promt": "Be brief."})


def test_command_line_values_are_not_blamed_on_the_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("task: sft\nlora:\n  r: 0\n")
    with pytest.raises(UserError) as err:
        load_config(path, {"train.epochs": -1})
    assert sorted(str(err.value).split("; ")) == [
        f"{path}: `lora.r`: Input should be greater than or equal to 1 (got 0)",
        "command line: `train.epochs`: Input should be greater than 0 (got -1)"]
    path.write_text("task: sft\n")
    with pytest.raises(UserError, match=r"^command line: unknown preset `fastt`"):
        load_config(path, {"train.preset": "fastt"})
    with pytest.raises(UserError, match=r"^command line: unknown key `lora.rank`"):
        load_config(path, {"lora.rank": 4})
    with pytest.raises(UserError, match=r"^command line: unknown task `sftt`.*did you mean `sft`"):
        load_config(path, {"task.name": "sftt"})
    path.write_text("task: sftt\n")
    with pytest.raises(UserError, match=r"cfg.yaml: unknown task `sftt`"):
        load_config(path)
    path.write_text("task: sft\n")
    with pytest.raises(UserError, match=r"^command line: unknown key `trian` \(did you mean `train`\?\)"):
        load_config(path, {"trian.epochs": 1})
    path.write_text("task: sft\nmodel:\n  load_in_4bit: true\n")  # one value from each place
    with pytest.raises(UserError, match=r"cfg.yaml \+ command line: `model`: choose one of load_in_4bit and load_in_8bit"):
        load_config(path, {"model.load_in_8bit": True})
    path.write_text("task: sft\ntrain:\n  epochs: -2\n")
    with pytest.raises(UserError, match=r"^.*cfg.yaml: `train.epochs`: Input should be greater than 0 \(got -2\)$"):
        load_config(path, {"train.learning_rate": 1e-4})


@pytest.mark.parametrize("text,message", [
    ("", "cfg.yaml: the config is empty; it needs at least `task: NAME`"),
    ("# only a comment\n", "cfg.yaml: the config is empty"),
    ("- task: sft\n", "cfg.yaml: the top level must be a mapping of sections .*not a list"),
    ("just text\n", "cfg.yaml: the top level must be a mapping of sections .*not the text `just text`"),
    ("task: sft\ntrain: 5\n", r"cfg.yaml: `train` must be a mapping of settings .*not `5`"),
    ("task: sft\nmodel: [a, b]\n", r"cfg.yaml: `model` must be a mapping of settings .*not a list"),
    ("task: 5\n", r"cfg.yaml: `task` must be a task name \(e.g. `task: sft`\) or a mapping"),
    ("task:\n  format: chat\n", r"cfg.yaml: `task` needs a `name`"),
    ("task: sft\nTrain:\n  epochs: 1\n", r"cfg.yaml: unknown key `Train` \(did you mean `train`\?\)"),
])
def test_malformed_config_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(path, {"train.epochs": 1})


def test_empty_section_means_defaults_and_config_must_be_utf8(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("task: sft\nlora:\n  # r: 8\nmodel:\n")
    cfg = load_config(path)
    assert cfg.lora.r == 16 and cfg.model.name_or_path
    path.write_bytes("task: sft\ntask_note: 1\n".encode() + "data:\n  train_path: 데이터.csv\n".encode("cp949"))
    with pytest.raises(UserError, match=r"cfg.yaml: line 4 is not UTF-8 text; save the config as UTF-8"):
        load_config(path)
    path.write_bytes("\ufefftask: sft\n".encode())  # a BOM (Notepad) is fine
    assert load_config(path).task.name == "sft"
