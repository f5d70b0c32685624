"""The resolved description of one training run. Its hash (with the data subset's fingerprint) is the run's id.

The model is configured under its family's name (`family: lstm` with `lstm: {size: 3M}`), as YAML and `--set`
spell it; in memory it is `config.model`, an instance of that family's config. Which names are families, and
what each one's config is, the registry says (models/registry.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, model_serializer, model_validator
from pydantic_core import InitErrorDetails

from scalelab.choices import EvalSplit, Regime
from scalelab.config import StrictModel
from scalelab.models import registry
from scalelab.train.schedule import ScheduleConfig


class OptimConfig(StrictModel):
    """AdamW with gradient clipping."""

    # Adam divides the rate by its bias correction (as small as 1 - beta1) and torch holds the step in float32
    # (max 3.4e38): past 1e30 the optimizer itself overflows, so such a rate is refused here, not mid-run.
    lr: float = Field(3e-3, gt=0, le=1e30, description="Peak learning rate.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay on matrices (not norms, biases).")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this; 0 turns it off.")


class TrainConfig(StrictModel):
    """One run: a model family and size trained on D tokens of a dataset, evaluated on its held-out split."""

    data: Path = Field(description="A prepared dataset directory.")
    variant: str | None = Field(None, description="Train variant; default: the dataset's first.")
    tokens: int = Field(gt=1, description="D: train on the first D tokens of the variant (a nested subset).")
    unique_tokens: int | None = Field(None, gt=1, description="U: draw the D tokens by repeating the first U "
                                                              "(D/U epochs of unique data), for data-constrained runs.")
    family: registry.FamilyName = Field(registry.DEFAULT, description=f"Model family: {', '.join(registry.FAMILIES)}.")
    model: SerializeAsAny[StrictModel] = Field(description="The family's model config, spelt under the family's "
                                                           "name.")
    regime: Regime = Field("single-pass", description="single-pass: see the D tokens once (or `epochs` times) "
                                                      "and report on eval_split; converge: repeat them, stopping "
                                                      "early when the validation loss stops improving, and report "
                                                      "the best checkpoint on the test split (the split no choice "
                                                      "was made on).")
    epochs: float | None = Field(None, gt=0, description="Duration in passes over the D tokens "
                                                         "(default: 1, or max_epochs when converging).")
    steps: int | None = Field(None, gt=0, description="Duration in optimizer steps (overrides epochs).")
    train_tokens: int | None = Field(None, gt=0, description="Duration in tokens (overrides epochs).")
    max_epochs: int = Field(20, gt=0, description="converge: upper bound on passes.")
    patience: int = Field(2, ge=1, description="converge: evaluations without improvement before stopping.")
    batch_size: int = Field(16, gt=0, description="Sequences per optimizer step (the global batch).")
    micro_batch_size: int | None = Field(None, gt=0, description="Sequences per forward pass per process; "
                                                                 "smaller values accumulate gradients.")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    eval_every: int | None = Field(None, gt=0, description="Steps between evaluations (default: ~5 per run, "
                                                           "or one per epoch when converging).")
    eval_split: EvalSplit = Field("validation", description="The held-out split a single-pass run evaluates "
                                                            "and reports on. converge ignores it: it selects on "
                                                            "validation and reports on test.")
    eval_tokens: int | None = Field(None, gt=0, description="Score a seeded random sample of whole held-out "
                                                            "documents holding this many tokens (the same for "
                                                            "every run of a dataset) instead of the whole split.")
    eval_batch_size: int = Field(16, gt=0)
    checkpoint_every: int | None = Field(None, gt=0, description="Steps between checkpoints "
                                                                 "(default: at every evaluation).")
    min_steps: int | None = Field(None, ge=1, description="Optimizer steps below which the run is marked "
                                                          "unreliable (a study sets its own; default: no minimum).")
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU.")
    compile: bool = Field(False, description="torch.compile the model.")
    deterministic: bool = Field(True, description="Deterministic kernels (CPU), so a resumed run matches exactly.")
    num_threads: int | None = Field(None, gt=0, description="torch CPU threads for this run.")
    tensorboard: bool = Field(False, description="Also log to TensorBoard (needs the tensorboard package).")

    @model_validator(mode="wrap")
    @classmethod
    def _family_sections(cls, data: Any, handler: Any) -> Any:
        """Validate each family section with its family's config and keep the chosen family's as `model`; the
        other sections (an earlier config.yaml holds every family's) are checked, then dropped. Every problem,
        in the sections or elsewhere, is reported together."""
        if not isinstance(data, dict):
            return handler(data)
        data = dict(data)
        name = data.get("family", registry.DEFAULT)
        sections = {key: data.pop(key) for key in list(data) if key in registry.FAMILIES}
        errors: list[Any] = []
        for key, section in sections.items():
            try:
                config = registry.family(key).config.model_validate(section)
            except ValidationError as exc:
                errors += [InitErrorDetails(type=e["type"], loc=(key, *e["loc"]), input=e["input"],
                                            ctx=e.get("ctx", {})) for e in exc.errors()]
                continue
            if key == name:
                data["model"] = config
        if name in registry.FAMILIES and name not in sections:
            data["model"] = registry.family(name).config()
        try:
            validated = handler(data)
        except ValidationError as exc:
            # An unknown family has no section to default to; "family: unknown ..." says it all.
            errors += [e for e in exc.errors() if e["loc"] != ("model",)]
            validated = None
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return validated

    @model_serializer(mode="wrap")
    def _model_under_family(self, handler: Any) -> dict[str, Any]:
        document = handler(self)
        if "model" in document:
            document[self.family] = document.pop("model")
        return document

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.unique_tokens is not None and self.unique_tokens > self.tokens:
            raise ValueError(f"unique_tokens ({self.unique_tokens}) cannot exceed tokens ({self.tokens})")
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size cannot exceed batch_size")
        if (self.unique_tokens is not None and self.unique_tokens < self.tokens
                and not registry.family(self.family).repeats_data):
            raise ValueError(f"unique_tokens ({self.unique_tokens}) below tokens ({self.tokens}): the {self.family} "
                             f"family is fitted on unique tokens only, never on repeated data (use "
                             f"tokens={self.unique_tokens})")
        return self

    @property
    def monitor_split(self) -> str:
        """The split evaluated during training: the one a converge run selects its checkpoint on."""
        return "validation" if self.regime == "converge" else self.eval_split

    @property
    def report_split(self) -> str:
        """The split of the run's reported figures. A converge run reports on test: the validation loss at the
        checkpoint it chose is biased down by the choice."""
        return "test" if self.regime == "converge" else self.eval_split

    def identity(self) -> dict:
        """The fields that decide the result: everything but where it runs and how it is logged. An unset
        min_steps is left out, so that runs configured before it existed keep their ids."""
        unset = {"min_steps"} if self.min_steps is None else set()
        content = self.model_dump(mode="json", exclude={"device", "num_threads", "tensorboard", "data", *unset})
        content["model"] = content.pop(self.family)
        return registry.family(self.family).identity(content)

    def run_id(self, data_fingerprint: str) -> str:
        blob = json.dumps({"config": self.identity(), "data": data_fingerprint}, sort_keys=True)
        return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()
