"""From a study spec to the list of runs it implies, with their cost — without training anything.

Planning says what it leaves out and what it cannot vouch for (`notes`, stderr by default): runs with U < D for a
family that cannot repeat data, or under converge, which repeats the data itself; and runs too small to reach the
study's min_steps, which train but are marked unreliable.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from scalelab.config import deep_merge, validate
from scalelab.data.store import TokenStore
from scalelab.errors import ConfigError
from scalelab.models.registry import family
from scalelab.progress import stderr_console
from scalelab.study.ladder import CONTEXT_LENGTH, hyperparameters
from scalelab.study.results import RunRecord
from scalelab.study.spec import StudySpec
from scalelab.train.config import TrainConfig
from scalelab.train.run import train_view

RUNS = "runs"


def run_dir(study_dir: Path, run_id: str) -> Path:
    """Where a study's run trains: its checkpoints, metrics and eval.json."""
    return study_dir / RUNS / run_id


Notes = Callable[[str], None]


def print_note(text: str) -> None:
    stderr_console.print(text, markup=False, highlight=False)


def _grid(spec: StudySpec, name: str, notes: Notes) -> list[tuple[int, int]]:
    """(D, U) pairs: every D with U = D, plus repeated-data runs for each U below D where the family and regime
    can measure them."""
    sizes = spec.grid(name)
    pairs = [(d, d) for d in sizes]
    repeated = [(d, unique) for unique in spec.unique_tokens or [] for d in sizes if d > unique]
    if not repeated:
        return pairs
    if not family(name).repeats_data:
        notes(f"{name}: skipped {len(repeated)} run(s) with U < D: this family is fitted on unique tokens only, "
              "and repeating them would only multiply its counts")
    elif spec.regime == "converge":
        # converge is L(D) on D unique tokens (Kaplan et al. 2020, Hestness et al. 2017): it repeats them until
        # early stopping, so a U below D would measure L(U) again. Repetition at a fixed number of epochs is the
        # data-constrained design of Muennighoff et al. (2023), which is single-pass with unique_tokens.
        notes(f"{name}: skipped {len(repeated)} run(s) with U < D: converge repeats the data until early stopping, "
              "so unique_tokens belongs to single-pass studies")
    else:
        pairs += repeated
    return pairs


def run_configs(spec: StudySpec, store: TokenStore, notes: Notes = print_note) -> list[TrainConfig]:
    configs = []
    for name, family_spec in spec.families.items():
        grid = _grid(spec, name, notes)
        variants = family_spec.variants or spec.variants
        for variant in variants:
            if variant not in store.variants:
                raise ConfigError(f"variants: {store.path} has no train variant {variant!r} "
                                  f"(it has {', '.join(store.variants)})")
            available = store.train(variant).n_tokens
            for size in family_spec.sizes:
                for d, u in grid:
                    if u > available:
                        raise ConfigError(f"data_sizes: {u:,} tokens asked of variant {variant!r}, which has "
                                          f"{available:,}")
                    for seed in spec.seeds:
                        configs.append(_config(spec, store, name, size, variant, d, u, seed))
    return configs


def _config(spec: StudySpec, store: TokenStore, name: str, size: str, variant: str, d: int, u: int,
            seed: int) -> TrainConfig:
    overrides = deep_merge(spec.train, spec.families[name].train)
    context = overrides.get(name, {}).get("context_length", CONTEXT_LENGTH)
    rung = hyperparameters(name, size, d, context, min_steps=spec.min_steps, regime=spec.regime)
    fields = deep_merge(rung, overrides)
    fields.update({"data": str(store.path), "variant": variant, "tokens": d, "family": name, "seed": seed,
                   "unique_tokens": u if u < d else None, "regime": spec.regime, "eval_tokens": spec.eval_tokens,
                   "eval_split": spec.eval_split, "min_steps": spec.min_steps})
    return validate(TrainConfig, fields, origin=f"study run ({name} {size}, D={d})")


def plan(spec: StudySpec, store: TokenStore, *, probe: bool = True, notes: Notes = print_note) -> list[RunRecord]:
    """The study's runs as pending records with their cost, one per distinct run id (an n-gram does not depend
    on the seed, so seeds collapse). D and U are what each run will see (`ModelFamily.data_seen`), as its eval.json
    will record them. What the plan skips, and each run that will be marked unreliable, goes to `notes`."""
    runs, seen = [], set()
    for config in run_configs(spec, store, notes):
        view = train_view(store, config)
        run_id = config.run_id(view.fingerprint)
        if run_id in seen:
            continue
        seen.add(run_id)
        adapter = family(config.family)
        cost = adapter.cost(config, len(view), store.tokenizer.vocab_size)
        seconds = estimate_seconds(config, store, cost.train_tokens) if probe else None
        d, u = adapter.data_seen(config)
        size, variant = adapter.size_label(config.model), config.variant or store.variants[0]
        if (reason := adapter.unreliable(config)) is not None:
            notes(f"unreliable: {config.family} {size} {variant} D={d:,}: {reason}")
        runs.append(RunRecord(id=run_id, config=config.model_dump(mode="json"), family=config.family,
                              size=size, variant=variant, D=d, U=u, seed=config.seed,
                              estimated_seconds=seconds, train_tokens=cost.train_tokens, flops=cost.flops))
    return runs


def estimate_seconds(config: TrainConfig, store: TokenStore, train_tokens: int) -> float:
    """Training tokens over the probed throughput, plus the run's evaluations at ~2.5x training speed."""
    speed = probe_throughput(str(store.path), config.family, config.model.model_dump_json())
    eval_tokens = config.eval_tokens or store.split(config.monitor_split).n_tokens
    return train_tokens / speed + family(config.family).evaluations * eval_tokens / (2.5 * speed)


@cache
def probe_throughput(data: str, name: str, model_json: str) -> float:
    """Tokens per second of training on this machine with one thread (cached per dataset and model)."""
    adapter = family(name)
    return adapter.throughput(TokenStore.open(data), adapter.config.model_validate_json(model_json))
