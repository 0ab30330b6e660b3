"""Typed results of the innerloop HTTP contract (v1).

The server answers in JSON; these pydantic models turn that into objects with
attributes and type hints, and fail loudly (``ResponseFormatError``) when the
server speaks a different version of the contract instead of handing the
caller half-parsed dicts. Unknown extra fields in responses are ignored so a
newer server can add fields without breaking older clients; model cards keep
their extra fields because they are free-form metadata.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AdaptResult",
    "Adaptation",
    "ModelCard",
    "ModelList",
    "PredictResult",
    "Prediction",
    "RegressionPrediction",
]


class Prediction(BaseModel):
    """One classification prediction, for one query, in query order.

    Attributes:
        label: The predicted label, exactly as given in the support set (``str`` or ``int``).
        scores: Probability per label. JSON object keys are strings, so the keys are
            ``str(label)`` even for integer labels. With ``top_k`` only the k best are present.
    """

    label: str | int
    scores: dict[str, float]

    def top(self, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` most probable ``(label, probability)`` pairs, best first.

        Ties are broken by label so that the order is deterministic; ``k=None``
        returns every scored label.
        """
        ranked = sorted(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked if k is None else ranked[: max(k, 0)]


class RegressionPrediction(BaseModel):
    """One regression prediction: the output vector for one query."""

    y: list[float]


class Adaptation(BaseModel):
    """How the server adapted the model to the support set for this request.

    Attributes:
        steps: Inner-loop gradient steps taken (fewer than ``max_steps`` when the model's
            loop stops once the support loss has converged).
        max_steps: The step budget (the request's ``steps`` or the model's default).
        lr: Inner-loop step size used (a scale factor for learned step sizes).
        support_loss: Support-set loss ``(before, after)`` adaptation: a cheap sanity
            check that adaptation did something.
        ms: Server-side time of this request in adapting and predicting, in milliseconds
            (its share of the call it was batched into).
        batch_size: Requests that shared one adaptation call with this one.
        batch_ms: Wall time of that whole shared call.
        scope: What the inner loop adapted (``all``, ``film``, ``last``, ``head``).
        adapter: The adapter id, when the request used one or ``adapt()`` made one.
    """

    steps: int
    lr: float
    support_loss: tuple[float, float]
    ms: float
    max_steps: int | None = None
    batch_size: int = 1
    batch_ms: float = 0.0
    scope: str = "all"
    adapter: str | None = None


class AdaptResult(BaseModel):
    """The response of ``POST /v1/adapt``: an adapter id to predict with, and how it was made."""

    model: str
    task: Literal["classification", "regression"]
    adapter: str
    labels: list[str | int]
    adaptation: Adaptation


class PredictResult(BaseModel):
    """The response of ``POST /v1/predict``."""

    model: str
    task: Literal["classification", "regression"]
    predictions: list[Prediction] | list[RegressionPrediction]
    adaptation: Adaptation

    @model_validator(mode="before")
    @classmethod
    def _infer_task(cls, data: Any) -> Any:
        """Fill ``task`` from the prediction shape when a server omits it (the design
        notes' example response does), so both forms of the contract parse."""
        if isinstance(data, dict) and "task" not in data:
            preds = data.get("predictions")
            first = preds[0] if isinstance(preds, list) and preds else None
            is_regression = isinstance(first, dict) and "y" in first and "label" not in first
            data = {**data, "task": "regression" if is_regression else "classification"}
        return data

    @model_validator(mode="after")
    def _check_task_matches(self) -> PredictResult:
        """Reject a response whose predictions contradict its declared task."""
        expected = Prediction if self.task == "classification" else RegressionPrediction
        if any(not isinstance(p, expected) for p in self.predictions):
            raise ValueError(f"task is {self.task!r} but predictions are not {expected.__name__}")
        return self

    @property
    def labels(self) -> list[str | int]:
        """The predicted label of every query, in query order (classification only)."""
        if self.task != "classification":
            raise TypeError("labels is only defined for classification results; use .predictions")
        return [p.label for p in self.predictions if isinstance(p, Prediction)]


class ModelCard(BaseModel):
    """A served model's card from ``GET /v1/models``.

    The documented fields are typed; anything else the server adds (the card is
    free-form metadata stored in the checkpoint) is kept as an extra attribute
    and in ``model_dump()``.
    """

    model_config = ConfigDict(extra="allow")

    name: str
    task: str
    input: dict[str, Any] = Field(default_factory=dict)
    algorithm: str | None = None
    max_ways: int | None = None
    inner_loop: dict[str, Any] = Field(default_factory=dict)
    trained_on: Any = None
    evaluation: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _max_ways_from_ways(cls, data: Any) -> Any:
        """The server sends ``"ways": {"min": 2, "max": N}``; ``max_ways`` is its ``max``."""
        if isinstance(data, dict) and data.get("max_ways") is None:
            ways = data.get("ways")
            if isinstance(ways, dict) and isinstance(ways.get("max"), int):
                data = {**data, "max_ways": ways["max"]}
        return data


class ModelList(BaseModel):
    """The response of ``GET /v1/models``."""

    models: list[ModelCard]
    default: str | None = None
