"""From a study spec to the list of runs it implies, with their cost — without training anything."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from scalelab.config import deep_merge, validate
from scalelab.data.store import TokenStore
from scalelab.errors import ConfigError
from scalelab.models.registry import family
from scalelab.study.ladder import CONTEXT_LENGTH, hyperparameters
from scalelab.study.results import RunRecord
from scalelab.study.spec import StudySpec
from scalelab.train.config import TrainConfig
from scalelab.train.run import train_view

RUNS = "runs"


def run_dir(study_dir: Path, run_id: str) -> Path:
    """Where a study's run trains: its checkpoints, metrics and eval.json."""
    return study_dir / RUNS / run_id


def _grid(spec: StudySpec, name: str) -> list[tuple[int, int]]:
    """(D, U) pairs: every D with U = D, plus repeated-data runs for each U below D."""
    sizes = spec.grid(name)
    pairs = [(d, d) for d in sizes]
    for unique in spec.unique_tokens or []:
        pairs += [(d, unique) for d in sizes if d > unique]
    return pairs


def run_configs(spec: StudySpec, store: TokenStore) -> list[TrainConfig]:
    configs = []
    for name, family_spec in spec.families.items():
        variants = family_spec.variants or spec.variants
        for variant in variants:
            if variant not in store.variants:
                raise ConfigError(f"variants: {store.path} has no train variant {variant!r} "
                                  f"(it has {', '.join(store.variants)})")
            available = store.train(variant).n_tokens
            for size in family_spec.sizes:
                for d, u in _grid(spec, name):
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
    fields = deep_merge(hyperparameters(name, size, d, context), overrides)
    fields.update({"data": str(store.path), "variant": variant, "tokens": d, "family": name, "seed": seed,
                   "unique_tokens": u if u < d else None, "regime": spec.regime, "eval_tokens": spec.eval_tokens,
                   "eval_split": spec.eval_split})
    return validate(TrainConfig, fields, origin=f"study run ({name} {size}, D={d})")


def plan(spec: StudySpec, store: TokenStore, *, probe: bool = True) -> list[RunRecord]:
    """The study's runs as pending records with their cost, one per distinct run id (an n-gram does not depend
    on the seed, so seeds collapse)."""
    runs, seen = [], set()
    for config in run_configs(spec, store):
        view = train_view(store, config)
        run_id = config.run_id(view.fingerprint)
        if run_id in seen:
            continue
        seen.add(run_id)
        adapter = family(config.family)
        cost = adapter.cost(config, len(view))
        seconds = estimate_seconds(config, store, cost.train_tokens) if probe else None
        runs.append(RunRecord(id=run_id, config=config.model_dump(mode="json"), family=config.family,
                              size=adapter.size_label(config.model), variant=config.variant or store.variants[0],
                              D=config.tokens, U=config.unique_tokens or config.tokens, seed=config.seed,
                              estimated_seconds=seconds, train_tokens=cost.train_tokens, flops=cost.flops))
    return runs


def estimate_seconds(config: TrainConfig, store: TokenStore, train_tokens: int) -> float:
    """Training tokens over the probed throughput, plus the run's evaluations at ~2.5x training speed."""
    speed = probe_throughput(str(store.path), config.family, config.model.model_dump_json())
    eval_tokens = config.eval_tokens or store.split(config.eval_split).n_tokens
    return train_tokens / speed + family(config.family).evaluations * eval_tokens / (2.5 * speed)


@cache
def probe_throughput(data: str, name: str, model_json: str) -> float:
    """Tokens per second of training on this machine with one thread (cached per dataset and model)."""
    adapter = family(name)
    return adapter.throughput(TokenStore.open(data), adapter.config.model_validate_json(model_json))
