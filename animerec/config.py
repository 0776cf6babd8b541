"""Training hyperparameters: plain JSON that reaches the Trainer through custom_config."""

from __future__ import annotations

import dataclasses
from typing import Any


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
    # Ranking adds popularity_prior * log(1 + training likes) to the logits (cosine /
    # temperature): logQ-corrected logits are popularity-debiased, while what users go on
    # to like is popularity-skewed. 0 turns it off.
    popularity_prior: float = 0.25
    top_k: int = 100
    seed: int = 0
    # Liked rows per streaming shuffle window (about 20 bytes each; two windows are held).
    # Transform's output is grouped by user, so this sets how many users a batch draws from.
    shuffle_buffer: int = 2_000_000

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
