"""Python SDK for the innerloop few-shot adaptation server (HTTP contract v1).

Give a handful of labelled examples (the support set) and the inputs to
classify (the query); the server adapts a meta-learned model to the support set
and returns typed predictions::

    from innerloop_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        result = client.predict({"cat": ["cat1.png", "cat2.png"], "dog": ["dog1.png"]},
                                query=["unknown.png"])
        print(result.predictions[0].label, result.predictions[0].top(2))

Only httpx and pydantic are required; Pillow (``[pillow]``) and numpy
(``[numpy]``) are needed only for the input types that use them.
"""

from ._client import Adapter, AsyncAdapter, AsyncClient, Client, build_predict_body
from ._encoding import (
    ImageInput,
    Input,
    Label,
    Target,
    encode_image,
    encode_input,
    encode_target,
    encode_vector,
)
from ._errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    InnerloopError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ResponseFormatError,
    ServerError,
)
from ._types import (
    Adaptation,
    AdaptResult,
    ModelCard,
    ModelList,
    Prediction,
    PredictResult,
    RegressionPrediction,
)
from ._version import __version__

__all__ = [
    "AdaptResult",
    "Adaptation",
    "Adapter",
    "AsyncAdapter",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConnectionFailedError",
    "ImageInput",
    "InnerloopError",
    "Input",
    "Label",
    "ModelCard",
    "ModelList",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PredictResult",
    "Prediction",
    "RegressionPrediction",
    "RequestTimeoutError",
    "ResponseFormatError",
    "ServerError",
    "Target",
    "__version__",
    "build_predict_body",
    "encode_image",
    "encode_input",
    "encode_target",
    "encode_vector",
]
