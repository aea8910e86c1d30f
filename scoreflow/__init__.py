"""ScoreFlow: score-based preference optimisation of LLM agent workflows."""

from scoreflow.errors import ScoreFlowError

__all__ = ["ScoreFlowError"]
