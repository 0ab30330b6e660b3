"""The HTTP contract v1 as pydantic models: what ``/docs`` shows and FastAPI validates.

Requests are validated **strictly** in the HTTP process, before anything is queued: ``"steps":
false`` or ``"steps": "5"`` is a 422, not 0 or 5; unknown fields are rejected (a typo such as
``"step"`` would otherwise be ignored silently); NaN and infinity (which Python's JSON parser
accepts as ``NaN``/``Infinity`` literals) are rejected. Checks that need the model's card
(image vs vector input, vector length, ways) and the configurable limits happen in
:mod:`innerloop_server.decoding`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Label = str | int
"""A class label, returned exactly as given (a string or an integer)."""

Input = str | list[float]
"""A base64 image (``data:image/png;base64,...`` allowed) or a vector of numbers."""

Target = str | int | float | list[float]
"""A class label (classification) or a number or vector of numbers (regression)."""

# three real 8x8 drawings, so that the schema's example is a request the server accepts
_EXAMPLE_PNGS = [
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAIklEQVR42jXGsQEAMAzC"
    "MMP/P9MhriZlnJKfxbjiiivuwnjrdwcPCnADEwAAAABJRU5ErkJggg==",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAJUlEQVR42i2LsQ0AAAyC"
    "xP9/tgN1wURkMRV8YRbmxHSYskzz/wPrdwcPtjTS8wAAAABJRU5ErkJggg==",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAGElEQVR42mP8zwABTAw4"
    "GQxQNf8ZcSsGAKGFBAnbLuoAAAAAAElFTkSuQmCC",
]

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class SupportItem(BaseModel):
    """One labelled example of the task."""

    model_config = _STRICT

    x: Input = Field(description="Base64 image (image models) or list of numbers (vector models).")
    y: Target = Field(description="Class label (string or integer) or regression target(s).")


class PredictRequest(BaseModel):
    """``POST /v1/predict``: adapt to ``support``, then predict ``query``."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "model": "omniglot",
                    "support": [
                        {"x": _EXAMPLE_PNGS[0], "y": "a"},
                        {"x": _EXAMPLE_PNGS[1], "y": "b"},
                    ],
                    "query": [_EXAMPLE_PNGS[2]],
                    "steps": 5,
                    "lr": 0.4,
                    "top_k": 5,
                }
            ]
        },
    )

    model: str | None = Field(None, description="Model name; the server's default if omitted.")
    support: list[SupportItem] | None = Field(
        None, description="The labelled examples to adapt on (omit when using `adapter`)."
    )
    query: list[Input] = Field(description="Inputs to predict, answered in order.")
    adapter: str | None = Field(
        None,
        description="An adapter id from `POST /v1/adapt`: predict without adapting again "
        "(then omit `support`, `steps` and `lr`; an unknown or evicted id is a 404).",
        max_length=128,
    )
    steps: int | None = Field(
        None, description="Inner-loop steps (the model's default if omitted)."
    )
    lr: float | None = Field(
        None, description="Inner-loop step size (the model's default if omitted)."
    )
    top_k: int | None = Field(None, description="Return only the k most likely labels' scores.")


class AdaptRequest(BaseModel):
    """``POST /v1/adapt``: adapt to ``support`` once; predict many times with the adapter id."""

    model_config = _STRICT

    model: str | None = Field(None, description="Model name; the server's default if omitted.")
    support: list[SupportItem] = Field(description="The labelled examples to adapt on.")
    steps: int | None = Field(
        None, description="Inner-loop steps (the model's default if omitted)."
    )
    lr: float | None = Field(
        None, description="Inner-loop step size (the model's default if omitted)."
    )


class ClassPrediction(BaseModel):
    label: Label = Field(description="The most likely label, as given in the support set.")
    scores: dict[str, float] = Field(
        description="Probability per label (keys are the labels as strings), most likely first."
    )


class RegressionPrediction(BaseModel):
    y: list[float]


class Loop(BaseModel):
    steps: int
    lr: float


class ScoredLoop(Loop):
    held_out_correct: int | None = Field(
        None, description="Held-out support examples this loop labelled right."
    )
    held_out_loss: float | None = Field(None, description="Their mean cross-entropy.")


class LoopChoice(BaseModel):
    """The per-request choice among the card's loops, made on held-out support examples."""

    chosen: Loop | None = Field(description="The loop that ran; null when none was chosen.")
    reason: str = Field(description="Why it won, or why no choice was made.")
    held_out: int | None = Field(None, description="Support examples held out to score loops.")
    candidates: list[ScoredLoop] = Field(default_factory=list)


class Adaptation(BaseModel):
    steps: int = Field(description="Inner steps run (fewer than max_steps when it converged).")
    max_steps: int | None = Field(None, description="The step budget: requested or the card's.")
    lr: float
    support_loss: list[float] = Field(description="Support loss [before, after] adaptation.")
    ms: float = Field(
        description="This request's milliseconds in the inner loop and prediction: its share "
        "(by rows) of the call it was batched into."
    )
    batch_size: int = Field(1, description="Requests that shared this adaptation call.")
    batch_ms: float = Field(0.0, description="Wall milliseconds of the whole shared call.")
    scope: str = Field("all", description="What the inner loop adapted (all, film, last, head).")
    adapter: str | None = Field(None, description="The adapter id, when one was used or made.")
    choice: LoopChoice | None = Field(
        None,
        description="Present when the model's card turns the per-request choice on and the "
        "request named neither steps nor lr.",
    )


class PredictResponse(BaseModel):
    model: str
    task: str = Field(description="classification or regression")
    predictions: list[ClassPrediction | RegressionPrediction]
    adaptation: Adaptation


class AdaptResponse(BaseModel):
    model: str
    task: str = Field(description="classification or regression")
    adapter: str = Field(
        description="Content hash of (model, support, steps, lr): the same call gives the same id."
    )
    labels: list[Label] = Field(description="The labels the adapter predicts (classification).")
    adaptation: Adaptation


class ErrorResponse(BaseModel):
    detail: str = Field(description="'<field>: <what is wrong and what is allowed>'")
