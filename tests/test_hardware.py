"""Hardware detection, CPU threads, matmul precision and memory readings: explicit, scoped, side-effect free.

Every CPU-dependent path is forced (device="cpu", dtype="float32"), so these pass on AVX2-only machines
and on bf16/AMX ones alike.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from tunelab.config.schema import ModelConfig
from tunelab.errors import UserError
from tunelab.models import threads
from tunelab.models.hardware import detect_hardware, matmul_precision, peak_rss_bytes


@pytest.fixture
def precision_highest():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture
def no_thread_env(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


# -- matmul precision ----------------------------------------------------------------------------
def test_detect_hardware_leaves_matmul_precision_alone(precision_highest):
    hardware = detect_hardware(ModelConfig(dtype="float32", device="cpu"))
    assert hardware.dtype == torch.float32
    assert torch.get_float32_matmul_precision() == "highest"  # fp32 asked for, fp32 matmuls it gets


def test_matmul_precision_is_scoped_and_restored(precision_highest):
    with matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(RuntimeError), matmul_precision("high"):
        raise RuntimeError("restored on errors too")
    assert torch.get_float32_matmul_precision() == "highest"
    with matmul_precision(None):  # None: leave it as it is
        assert torch.get_float32_matmul_precision() == "highest"


def test_matmul_precision_is_a_config_key_defaulting_to_full_fp32():
    assert ModelConfig().matmul_precision == "highest"
    with pytest.raises(ValueError):
        ModelConfig(matmul_precision="low")


# -- CPU threads ---------------------------------------------------------------------------------
def test_calibration_leaves_global_rng_and_thread_count_unchanged(monkeypatch, no_thread_env):
    monkeypatch.setattr(threads, "_measured", None)  # measure now, even if another test measured already
    torch.manual_seed(1234)
    rng, count = torch.get_rng_state(), torch.get_num_threads()
    best = threads.calibrate_cpu_threads()
    assert torch.equal(torch.get_rng_state(), rng)  # seeded runs do not depend on whether calibration ran
    assert torch.get_num_threads() == count  # it measures and returns; the caller decides
    assert 1 <= best <= count
    assert threads.choose_cpu_threads() == (best, "measured")


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_bad_thread_env_is_a_user_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(threads.THREADS_ENV, value)
    with pytest.raises(UserError, match=f"TUNELAB_THREADS={value!r}"):
        threads.choose_cpu_threads()


def test_thread_count_precedence(monkeypatch, no_thread_env):
    monkeypatch.setattr(threads, "calibrate_cpu_threads", lambda: pytest.fail("must not measure"))
    assert threads.choose_cpu_threads(3) == (3, "train.cpu_threads")
    monkeypatch.setenv(threads.THREADS_ENV, " 2 ")
    assert threads.choose_cpu_threads() == (2, "TUNELAB_THREADS")
    assert threads.choose_cpu_threads(1) == (1, "train.cpu_threads")  # the run's config is explicit
    monkeypatch.delenv(threads.THREADS_ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_cpu_threads() == (torch.get_num_threads(), "OMP_NUM_THREADS")
    with pytest.raises(UserError, match="train.cpu_threads"):
        threads.choose_cpu_threads(0)


def test_cpu_threads_is_scoped():
    count = torch.get_num_threads()
    with threads.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == count


def test_generation_engine_does_not_import_training():
    # inference sits beside training, both above models: the engine's thread choice comes from models/.
    code = textwrap.dedent("""
        import sys
        from transformers import LlamaConfig, LlamaForCausalLM
        from tunelab.inference.engine import GenerationEngine
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        engine = GenerationEngine(model, tokenizer=None)
        assert engine.cpu_threads == 1, engine.cpu_threads
        print(sorted(m for m in sys.modules if m.startswith("tunelab.training")))
    """)
    env = {**__import__("os").environ, "TUNELAB_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# -- the trainer applies both settings only while it runs ------------------------------------------
def test_trainer_applies_threads_and_precision_only_while_training(tmp_path, precision_highest):
    from transformers import TrainerCallback, TrainingArguments

    from tunelab.data.collate import CausalLMCollator
    from tunelab.training.trainer import TunelabTrainer
    from test_speed import make_examples, tiny_llama

    seen = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append((torch.get_num_threads(), torch.get_float32_matmul_precision()))

    count = torch.get_num_threads()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, use_cpu=True,
                             report_to=[], save_strategy="no", disable_tqdm=True)
    trainer = TunelabTrainer(model=tiny_llama(), args=args, data_collator=CausalLMCollator(0),
                             train_dataset=make_examples(8), callbacks=[Record()],
                             cpu_threads=1, matmul_precision="medium")
    assert trainer.cpu_threads == 1  # the count used, for the caller to report
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (count, "highest")  # not yet
    trainer.train()
    assert seen == [(1, "medium")] * 2
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (count, "highest")  # restored


def test_trainer_rejects_a_bad_thread_env(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from tunelab.training.trainer import TunelabTrainer
    from test_speed import tiny_llama

    monkeypatch.setenv(threads.THREADS_ENV, "abc")
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(UserError, match="TUNELAB_THREADS"):
        TunelabTrainer(model=tiny_llama(), args=args)


# -- memory --------------------------------------------------------------------------------------
@pytest.mark.parametrize("platform, ru_maxrss", [("linux", 3 * 1024**2), ("darwin", 3 * 1024**3)])
def test_peak_rss_is_in_bytes_on_every_platform(monkeypatch, platform, ru_maxrss):
    import resource

    from tunelab.training.callbacks import memory_snapshot

    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=ru_maxrss))
    assert peak_rss_bytes() == 3 * 1024**3  # KiB on Linux, bytes on macOS
    assert memory_snapshot()["peak_rss_gb"] == 3.0


def test_cpu_bf16_detection_can_be_overridden(monkeypatch):
    from tunelab.config.schema import ModelConfig
    from tunelab.errors import UserError
    from tunelab.models.hardware import cpu_has_fast_bf16, detect_hardware

    try:
        for value, dtype in (("0", torch.float32), ("1", torch.bfloat16)):
            monkeypatch.setenv("TUNELAB_CPU_BF16", value)
            cpu_has_fast_bf16.cache_clear()
            assert detect_hardware(ModelConfig(device="cpu")).dtype == dtype
        monkeypatch.setenv("TUNELAB_CPU_BF16", "yes")
        cpu_has_fast_bf16.cache_clear()
        with pytest.raises(UserError, match="TUNELAB_CPU_BF16"):
            cpu_has_fast_bf16()
    finally:
        monkeypatch.delenv("TUNELAB_CPU_BF16")
        cpu_has_fast_bf16.cache_clear()
