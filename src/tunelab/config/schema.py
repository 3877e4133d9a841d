"""The run configuration: one pydantic model per concern.

`RunConfig` = model + data + task + lora + train + generation. Every section
forbids unknown keys so a typo is an error (with a did-you-mean), not a
silently ignored setting. The task section is validated by the task plug-in's
own config class, looked up in the task registry by `task.name`.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from tunelab.plugins import load_task_class


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(Section):
    name_or_path: str = "smollm2-135m-instruct"
    """A local folder, a packaged alias (`tunelab models`), or a Hub id when online."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute precision; `auto` picks bf16 where the hardware runs it fast, else fp32."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    attn_implementation: str | None = None
    """e.g. `sdpa`, `eager`, `flash_attention_2` (CUDA only); None = FlashAttention-2 on CUDA when
    flash-attn is installed, else the model's default (sdpa)."""
    chat_template: str | None = None
    """A Jinja chat template, or the name of a built-in one (`gemma`, `chatml`), for models without one."""
    trust_remote_code: bool = False
    """Run Python code shipped with a model folder. Loading a finished run or bundle never turns it on by
    itself: only `--trust-remote-code` on the command line does (tunelab.load(..., trust_remote_code=True))."""
    predict_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of a trained run at prediction time; `auto` is resolved when training starts and saved with the
    run (float32 on CPU, which reproduces the reported eval metrics, except text generation on a CPU with fast
    bf16, which decodes in bf16; the training dtype on GPUs)."""
    pooling: Literal["auto", "native", "mean"] = "auto"
    """How an encoder's classification head reads the sequence: `mean` = attention-masked mean of the token
    states (how sentence-embedding models were trained), `native` = the model's own pooler (BERT: CLS);
    `auto` = `mean` for a sentence-transformers folder that declares mean pooling, else `native`. Resolved
    when training starts and saved with the run."""
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    """torch's float32 matmul precision while training: `highest` = true fp32; `high`/`medium` allow
    TF32 or bf16 inside fp32 matmuls (faster on GPUs and bf16 CPUs, less precise)."""

    @model_validator(mode="after")
    def _one_quantization(self) -> "ModelConfig":
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("choose one of load_in_4bit and load_in_8bit")
        return self


class DataConfig(Section):
    train_path: str | None = None
    eval_path: str | None = None
    """Optional separate eval file; otherwise `eval_fraction` of train is held out."""
    encoding: str = "auto"
    """`auto` detects UTF-8 (with or without BOM), UTF-16, CP949/EUC-KR and CP1252/Latin-1 (others when
    charset_normalizer is confident), and asks when unsure; or name one (cp949, cp1252, latin-1, ...)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Maps the task's field names to your file's column names, e.g. {question: Q, answer: A}."""
    categories: list[str] = Field(default_factory=list)
    """Keep only these categories (empty = all)."""
    difficulties: list[str] = Field(default_factory=list)
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    stratify_by: str | None = "category"
    """Field to stratify the train/eval split by (if present in the data)."""
    group_by: str | None = None
    """Keep all rows sharing this field's value on one side of the split (avoids leakage)."""
    drop_duplicates: bool = True
    overlong: Literal["truncate", "drop"] = "truncate"
    max_rows: int | None = Field(None, ge=1)
    """Use only the first N rows of the training file (after filters) — for quick trials."""
    seed: int = 42


class LoraConfig(Section):
    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    # 0 by default: peft's own default, and on CPU a LoRA dropout mask per adapted layer was 23% of a
    # step (bench/README.md). Raise it for small data sets that overfit.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    trainable_token_indices: list[int] | None = None
    """Embedding rows trained in full beside the adapters (peft's trainable tokens), e.g. the ids of tokens added
    with `tunelab lab tokens --add`. None: the ids that folder lists in tunelab_added_tokens.json, if any."""


Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]


class TrainConfig(Section):
    preset: Literal["fast", "balanced", "quality", "memory_efficient"] = "balanced"
    output_dir: str | None = None
    """Run directory; default runs/<task>-<timestamp>."""
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    max_length: int | None = Field(None, ge=8)
    scheduler: Scheduler | None = None
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Cross-entropy label smoothing: the target puts this mass evenly on all classes (or all tokens)."""
    gradient_checkpointing: bool | None = None
    neftune_alpha: float | None = None
    use_liger_kernel: bool | None = None
    """Liger fused kernels (CUDA only); None = on where CUDA and the liger-kernel package are there."""
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    """Evaluate every N steps (default: once per epoch)."""
    save_steps: int | None = Field(None, ge=1)
    """Save a checkpoint every N steps (default: at each evaluation). With eval data it must be a
    multiple of eval_steps: the best checkpoint is picked among evaluated ones."""
    save_total_limit: int = Field(2, ge=1)
    seed: int = 42
    estimate_steps: int = Field(3, ge=0)
    """Real steps timed to print the training-time estimate (0 = no estimate)."""
    cpu_threads: int | None = Field(None, ge=1)
    """torch CPU threads while training; None = TUNELAB_THREADS, else OMP_NUM_THREADS, else measured (~0.5 s)."""
    compile_blocks: bool = False
    """Regional torch.compile of the model's repeated blocks (each layer compiled once; inductor's disk cache
    serves later runs). Off by default: ~25% faster steps on short bf16 CPU batches, but not yet measured to
    pay back its compile time in a whole run (training/compile.py)."""
    report_to: Literal["none", "tensorboard", "mlflow", "trackio"] = "none"
    """Also log to an experiment tracker (passed to the Trainer): `tensorboard` writes event files to
    <run>/tensorboard, `mlflow` a local store in <run>/mlruns (unless MLFLOW_TRACKING_URI is set), `trackio` its own
    local store. The tracker's package must be installed; history.jsonl is written either way."""


class GenerationConfig(Section):
    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.1, gt=0)
    batch_size: int = Field(16, ge=1)


class TaskConfig(Section):
    """Base for every task plug-in's config; `name` picks the plug-in."""

    name: str


class RunConfig(Section):
    task: SerializeAsAny[TaskConfig]
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    @field_validator("task", mode="before")
    @classmethod
    def _task_plugin_config(cls, value: Any) -> TaskConfig:
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, TaskConfig):
            value = value.model_dump()
        if not isinstance(value, dict) or "name" not in value:
            raise ValueError("task needs a `name` (see `tunelab tasks`)")
        return load_task_class(value["name"]).config_class.model_validate(value)
