"""The thin client: raw item ids in, raw item ids and scores out, over Triton gRPC or HTTP.

``RecommenderClient`` (sync, thread safe) and ``AsyncRecommenderClient`` (asyncio) share the
request checks (:mod:`.validation`), the error mapping and retry policy (:mod:`.errors`) and the
options (:mod:`.base`). Nothing here imports torch.
"""

from .aio import AsyncRecommenderClient
from ..settings import ENV_ADMIN_KEY
from .base import parse_url
from .errors import RetryPolicy, is_retryable, map_exception
from ..idmap import IdMap
from .sync import RecommenderClient
from .validation import (
    EncodedHistory,
    ModelSpec,
    Recommendation,
    decode_top,
    encode_history,
    load_repository_info,
    model_counts,
    pad_batch,
    validate_k,
)

__all__ = [
    "AsyncRecommenderClient", "RecommenderClient", "Recommendation", "ModelSpec", "EncodedHistory", "IdMap",
    "RetryPolicy", "ENV_ADMIN_KEY", "parse_url", "is_retryable", "map_exception", "encode_history",
    "decode_top", "pad_batch", "validate_k", "load_repository_info", "model_counts",
]
