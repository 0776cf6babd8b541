"""The retrieval quality gate: metrics against baselines, and the blessing."""
