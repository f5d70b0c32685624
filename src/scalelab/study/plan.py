"""From a study spec to the list of runs it implies, with their cost — without training anything."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from scalelab.config import validate
from scalelab.data.store import TokenStore
from scalelab.errors import ConfigError
from scalelab.models.registry import Family, flops_per_token
from scalelab.study.ladder import CONTEXT_LENGTH, hyperparameters
from scalelab.study.spec import StudySpec
from scalelab.train.config import TrainConfig

RUNS = "runs"


@dataclass(frozen=True)
class PlannedRun:
    config: TrainConfig
    run_id: str
    run_dir: Path
    family: Family
    size: str
    variant: str
    D: int
    U: int
    seed: int
    train_tokens: int
    flops: float
    seconds: float | None


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _grid(spec: StudySpec, family: Family) -> list[tuple[int, int]]:
    """(D, U) pairs: every D with U = D, plus repeated-data runs for each U below D."""
    sizes = spec.grid(family)
    pairs = [(d, d) for d in sizes]
    for unique in spec.unique_tokens or []:
        pairs += [(d, unique) for d in sizes if d > unique]
    return pairs


def run_configs(spec: StudySpec, store: TokenStore) -> list[TrainConfig]:
    configs = []
    for family, family_spec in spec.families.items():
        variants = family_spec.variants or spec.variants
        for variant in variants:
            if variant not in store.variants:
                raise ConfigError(f"variants: {store.path} has no train variant {variant!r} "
                                  f"(it has {', '.join(store.variants)})")
            available = store.train(variant).n_tokens
            for size in family_spec.sizes:
                for d, u in _grid(spec, family):
                    if u > available:
                        raise ConfigError(f"data_sizes: {u:,} tokens asked of variant {variant!r}, which has "
                                          f"{available:,}")
                    for seed in spec.seeds:
                        configs.append(_config(spec, store, family, size, variant, d, u, seed))
    return configs


def _config(spec: StudySpec, store: TokenStore, family: Family, size: str, variant: str, d: int, u: int,
            seed: int) -> TrainConfig:
    overrides = deep_merge(spec.train, spec.families[family].train)
    context = overrides.get(family, {}).get("context_length", CONTEXT_LENGTH)
    fields = deep_merge(hyperparameters(family, size, d, context), overrides)
    fields.update({"data": str(store.path), "variant": variant, "tokens": d, "family": family, "seed": seed,
                   "unique_tokens": u if u < d else None, "regime": spec.regime, "eval_tokens": spec.eval_tokens,
                   "eval_split": spec.eval_split})
    return validate(TrainConfig, fields, origin=f"study run ({family} {size}, D={d})")


def plan(spec: StudySpec, store: TokenStore, *, probe: bool = True) -> list[PlannedRun]:
    """The study's runs, one per distinct run id (an n-gram does not depend on the seed, so seeds collapse)."""
    runs, seen = [], set()
    for config in run_configs(spec, store):
        view_fingerprint = _view_fingerprint(store, config)
        run_id = config.run_id(view_fingerprint)
        if run_id in seen:
            continue
        seen.add(run_id)
        size = str(config.ngram.order) if config.family == "ngram" else config.model_config_for_family.size
        epochs = config.epochs or (config.max_epochs if config.regime == "converge" else 1.0)
        train_tokens = int(config.tokens * epochs) if config.family != "ngram" else config.tokens
        flops = 0.0 if config.family == "ngram" else flops_per_token(
            config.model_config_for_family, config.model_config_for_family.context_length) * train_tokens
        seconds = estimate_seconds(config, store, train_tokens) if probe else None
        runs.append(PlannedRun(config, run_id, spec.directory / RUNS / run_id, config.family, size,
                               config.variant or store.variants[0], config.tokens,
                               config.unique_tokens or config.tokens, config.seed, train_tokens, flops, seconds))
    return runs


def _view_fingerprint(store: TokenStore, config: TrainConfig) -> str:
    from scalelab.train.run import train_view

    return train_view(store, config).fingerprint


def estimate_seconds(config: TrainConfig, store: TokenStore, train_tokens: int) -> float:
    """Training tokens over the probed throughput, plus about five evaluations at ~2.5x training speed."""
    speed = probe_throughput(str(store.path), config.family, config.model_config_for_family.model_dump_json(),
                             store.tokenizer.vocab_size)
    eval_tokens = config.eval_tokens or store.split(config.eval_split).n_tokens
    evals = 1 if config.family == "ngram" else 5
    return train_tokens / speed + evals * eval_tokens / (2.5 * speed)


@cache
def probe_throughput(data: str, family: Family, model_json: str, vocab_size: int) -> float:
    """Tokens per second of training on this machine with one thread, from a few timed steps (or, for the
    n-gram, from fitting 200k tokens)."""
    import numpy as np
    import torch

    from scalelab.models.ngram import KneserNeyLM
    from scalelab.models.registry import CONFIGS, build, logits

    store = TokenStore.open(data)
    config = CONFIGS[family].model_validate_json(model_json)
    if family == "ngram":
        tokens = np.asarray(store.train().tokens[: min(200_000, store.train().n_tokens)])
        started = time.perf_counter()
        KneserNeyLM.fit(tokens, config.order, vocab_size)
        return len(tokens) / (time.perf_counter() - started)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build(config, vocab_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        context = min(config.context_length, store.train().n_tokens - 2)
        tokens = torch.from_numpy(np.asarray(store.train().tokens[: 8 * (context + 1)], dtype=np.int64))
        batch = tokens.view(8, context + 1)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            out = logits(model, batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), batch[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            timings.append(time.perf_counter() - started)
        return 8 * context / min(timings[1:])
    finally:
        torch.set_num_threads(threads)
