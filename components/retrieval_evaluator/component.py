"""RetrievalEvaluator: recall/NDCG@k of the model against baselines, and the blessing.

TFMA has no retrieval metrics over a full catalog with per-user exclusions, so
this component computes them itself (executor.py) and writes the standard
ModelEvaluation and ModelBlessing artifacts that Pusher and
LatestBlessedModelStrategy understand.
"""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from animerec.components.retrieval_evaluator import executor
from animerec.evaluation import GateConfig

__all__ = ["GateConfig", "RetrievalEvaluator", "RetrievalEvaluatorSpec"]

EXAMPLES_KEY = "examples"
MODEL_KEY = "model"
BASELINE_MODEL_KEY = "baseline_model"
EVALUATION_KEY = "evaluation"
BLESSING_KEY = "blessing"
GATE_CONFIG_KEY = "gate_config"


class RetrievalEvaluatorSpec(types.ComponentSpec):
    PARAMETERS = {GATE_CONFIG_KEY: ExecutionParameter(type=str)}
    INPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {
        EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation),
        BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class RetrievalEvaluator(base_component.BaseComponent):
    """Evaluates on ExampleGen's eval split; blesses per the JSON GateConfig."""

    SPEC_CLASS = RetrievalEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples, model, gate_config: str, baseline_model=None):
        spec = RetrievalEvaluatorSpec(
            examples=examples,
            model=model,
            baseline_model=baseline_model,
            gate_config=gate_config,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        )
        super().__init__(spec=spec)
