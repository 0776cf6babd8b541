"""Training hyperparameters: plain JSON that reaches the Trainer through custom_config."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from animerec import evaluation
from animerec.data import interactions


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters that reach the Trainer as plain JSON (custom_config)."""

    embedding_dim: int = 64
    epochs: int = 5
    batch_size: int = 1024
    learning_rate: float = 0.005
    temperature: float = 0.05
    # On the real sample a history-only query tower generalizes better than one with a user-id embedding.
    use_user_embedding: bool = False
    # History items and candidates share one id embedding table (one item space).
    share_item_embeddings: bool = True
    # Retrieval adds prior * log(1 + training likes) to the logits (cosine / temperature),
    # the prior chosen on validation from popularity_prior_grid: logQ-corrected logits are
    # popularity-debiased, while what users go on to like is popularity-skewed.
    # The second stage (animerec.model.two_stage): the ranker reorders this many of the
    # two-tower's top titles. The grids below are searched on the validation split.
    # 200 + 100 scored as 300 + 200 on validation (3 seeds on the real sample: +0.001
    # recall@50 on average) and costs 0.15 ms less a request; 150 + 100 scored +0.0004 on
    # the real sample and -0.0026 on the demo data against 200 + 100 (100 + 100: -0.004
    # and 150 + 50: -0.005 on the real sample), for about 0.07 ms less a request.
    ranking_candidates: int = 150
    # ... together with this many of the item-item top titles (animerec.model.ranking).
    item_item_candidates: int = 100
    # Share of each user's liked training rows held out for validation
    # (interactions.validation_rows). The model ships this config, and the Evaluator tunes
    # EASE's L2 on the same carve (the default one when this is 0: no validation split).
    validation_percent: int = interactions.VALIDATION_PERCENT
    # Rank of the EASE factorization behind the item-item feature and candidates.
    item_item_rank: int = 256
    # Rank of the EASE scores that choose the item-item candidates (their leading
    # components); the candidates' own scores use item_item_rank. On validation (3 seeds),
    # 64 scored 0.3325 recall@50 against 256's 0.3334 on the real sample and 0.6475
    # against 0.6490 on the demo data, for a quarter of the request's largest product
    # (32: 0.3296).
    item_item_candidate_rank: int = 64
    # Item-item's candidates come from this many of EASE's titles (the most liked; None: all
    # of EASE's, up to evaluation.EASE_MAX_ITEMS). On validation (3 seeds) 2,000 scored
    # 0.3276 recall@50 against all (up to 8,000) titles' 0.3280 on the real sample and 0.6473
    # against 0.6470 on the demo data (1,000: 0.3276 and 0.6467), and it reads a quarter of
    # the weights a request reads to choose the candidates when EASE has 8,000 titles. With
    # the item-item share and rank features dropped, 1,000 scored 0.3310 against 2,000's
    # 0.3317 on the real sample and 0.6448 against 0.6433 on the demo data, for half of that
    # product and of its top 100.
    item_item_candidate_titles: int | None = 1000
    # Nearest titles kept per title for the item-kNN feature (the candidate's highest
    # cosine similarity to a liked title). 20, 50 and 100 tied on validation (real sample,
    # 3 seeds: 0.333, 0.332, 0.333 recall@50, exact similarities 0.336). With the
    # candidates chosen at item_item_candidate_rank 64, 20 scored 0.328 against 50's 0.333
    # (demo data: 0.646 against 0.648); 30 scored 0.3274 against 50's 0.3276 (demo data:
    # 0.6471 against 0.6477), with two fifths fewer lookups a request.
    item_knn_neighbours: int = 30
    ease_l2_grid: tuple = evaluation.EASE_L2_GRID
    popularity_prior_grid: tuple = (0.0, 0.25, 0.5, 1.0)
    # Ranker shapes (hidden layer sizes; [] is a linear model). With several, each is
    # scored on validation by cross-fitting and the best is kept: [], [32] and [64, 32]
    # scored within 0.001 recall@50 of each other on the real sample, [32] 0.011 above
    # [] on the demo data, so the default is [32] alone.
    ranker_hidden_units: tuple = ((32,),)
    # Ranker epochs over the validation lists, at most ranker_max_steps batches of 64
    # lists (a bound on the Trainer's time as the data grows), and the validation users
    # whose lists the ranker learns from (their features, about 9 KB a user, are held in
    # memory; EASE's L2 and the prior are chosen on at most
    # evaluation.VALIDATION_MAX_USERS of them). On the demo data's 7,468 validation users
    # (3 seeds, cross-fitted on 2,000 of them, the others only ever fitting), all of them
    # at 900 steps scored 0.6481 recall@50 against 2,000 users' 0.6443 at 300 steps;
    # 1,800 and 3,600 steps scored 0.6473 and 0.6479, and 2,000 users at 900 steps
    # 0.6453: more lists, with the steps to read them, is the gain. On the real sample
    # (172 validation users, 90 steps) 60 and 100 epochs did not beat 30.
    ranker_epochs: int = 30
    ranker_max_steps: int = 900
    ranker_max_users: int = 10_000
    # MLPs averaged in the ranker (each from its own initialization). On validation (3
    # seeds) 3 scored 0.3269 recall@50 against 5's 0.3276 on the real sample and 0.6469
    # against 0.6477 on the demo data, for 40% less of the ranker's work a request.
    ranker_members: int = 3
    top_k: int = 100
    seed: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_number(value) -> bool:
    """An int or a float that is not NaN (infinities are numbers: `max_regression` inf
    turns the regression check off)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not (isinstance(value, float) and math.isnan(value))


def _shaped_like(value, default) -> bool:
    """A tuple field's value against its default: lists where it has tuples, at any depth,
    and elements of its elements' types (the grids' numbers, the ranker shapes' ints)."""
    if isinstance(default, tuple):
        return isinstance(value, list | tuple) and (not default or all(_shaped_like(v, default[0]) for v in value))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return _is_number(value)


def _type_error(value, annotation, default=None) -> str | None:
    """Why a JSON value does not fit a config field's annotation (None: it fits). The
    fields' types are int, float, bool, str, tuple (a JSON list shaped like the field's
    `default`, never empty) and `X | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = [_type_error(value, a, default) for a in options if a is not type(None)]
        return None if None in errors else errors[0]
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if annotation is float:
        return None if _is_number(value) else "a number"
    if annotation is str:
        return None if isinstance(value, str) else "a string"
    if annotation is tuple:
        ok = isinstance(value, list | tuple) and len(value) > 0 and _shaped_like(value, default)
        return None if ok else f"a non-empty JSON list shaped like {json.dumps(default)}"
    return None


def parse_config(config_class, value: str | dict | None, name: str):
    """config_class (a dataclass of this package: TrainingConfig, evaluation.GateConfig)
    from JSON text or an already parsed object, as the pipeline's components read their
    configuration and `kubeflow submit` checks it before a run: an unknown key or a value
    of the wrong type is a ValueError naming `name`, the key and what was expected, at
    the start of a run (or before it is sent), not a failure at its end."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{name}: not JSON: {value}") from None
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a JSON object, got {json.dumps(value)}")
    hints = typing.get_type_hints(config_class)
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    defaults = {field.name: field.default for field in dataclasses.fields(config_class)}
    for key, item in value.items():
        expected = _type_error(item, hints[key], defaults[key])
        if expected:
            raise ValueError(f"{name}: {key} must be {expected}; got {json.dumps(item)}")
    return config_class(**value)
