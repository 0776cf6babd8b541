"""Training hyperparameters: plain JSON that reaches the Trainer through custom_config."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters that reach the Trainer as plain JSON (custom_config)."""

    embedding_dim: int = 64
    epochs: int = 6
    batch_size: int = 1024
    learning_rate: float = 0.005
    temperature: float = 0.05
    # On the real sample a history-only query tower generalizes better than one with a user-id embedding.
    use_user_embedding: bool = False
    top_k: int = 100
    seed: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
