"""One error hierarchy for the whole package.

Every error the library raises on purpose is an ``FsRecError``; each message names the
problem *and* the fix (the setting, option or file to change).
"""

from __future__ import annotations


class FsRecError(Exception):
    """Root of all fsrec-serve errors."""


# -- configuration / settings -------------------------------------------------------------
class ConfigError(FsRecError, ValueError):
    """A setting, option or config value is invalid."""


# -- data -----------------------------------------------------------------------------
class DataError(FsRecError):
    """Problems with data sets, id maps and splits."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data directory or a data file is missing."""


class DataFormatError(DataError, ValueError):
    """A data file has a malformed line; the message names the file and line number."""


class UnknownDatasetError(DataError, KeyError):
    """A data set name that the package does not know."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class EmptyUserError(DataError, ValueError):
    """A user (or a history) has no interactions where some are required."""


class ChecksumError(DataError):
    """A downloaded file does not match its published SHA-256."""


class UnknownItemError(DataError, KeyError):
    """A raw item id that the id map does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- model / training -------------------------------------------------------------------
class ModelError(FsRecError):
    """Model construction, loading or saving failed."""


class TrainingError(FsRecError):
    """Training could not run (bad data, diverged loss, ...)."""


# -- adaptation ----------------------------------------------------------------------
class AdaptationError(FsRecError):
    """Few-shot adaptation failed or was asked for something it cannot do."""


class SupportSetError(AdaptationError, ValueError):
    """The support set is empty or too small for the asked strategy."""


# -- export / quantization / repository -------------------------------------------------
class ExportError(FsRecError):
    """ONNX export failed."""


class ExportValidationError(ExportError):
    """The exported graph does not reproduce PyTorch's outputs."""


class QuantizationGuardError(ExportError):
    """A quantized/optimized model failed the accuracy or batch-invariance guard."""


class RepositoryError(FsRecError):
    """The Triton model repository could not be written or is inconsistent."""


# -- serving / client ------------------------------------------------------------------
class ServingError(FsRecError):
    """tritonserver could not be started, or stopped unexpectedly."""


class ServerStartError(ServingError):
    """tritonserver failed to start (port in use, repository failed to load, ...)."""


class ClientError(FsRecError):
    """Errors raised by the RecommenderClient."""


class InvalidRequestError(ClientError, ValueError):
    """The request was refused before it was sent (empty history, bad k, unknown ids)."""


class ServerUnavailableError(ClientError):
    """The server could not be reached or is overloaded (after retries)."""


class InferenceServerError(ClientError):
    """Triton answered with an error for this request."""


class AuthorizationError(ClientError):
    """A restricted endpoint refused the request (missing or wrong key)."""


# -- serving / client (appended by the serving area) ---------------------------------------
class TritonNotFoundError(ServingError, FileNotFoundError):
    """The tritonserver binary is not installed (pip install 'fsrec-serve[triton]')."""


class RequestTimeoutError(ServerUnavailableError):
    """The server did not answer within the client's timeout (not retried: it may be busy)."""


class ModelControlError(InferenceServerError):
    """Loading or unloading a model through Triton's model-control API failed."""


# -- load tests (loadtests area) --------------------------------------------------------------
class LoadTestError(FsRecError):
    """A load test could not run or its reports could not be read (not a failed gate)."""


# -- operations (appended by the ops area) ------------------------------------------------------
class RolloutError(ServingError):
    """A rollout of a new model version failed; the serving version(s) were kept (or restored)."""


# -- per-user state and events (store area) ----------------------------------------------------
class StoreError(FsRecError):
    """The per-user state store or its event log refused or failed an operation."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The store (SQLite file, redis-server) cannot be reached; the message names it and the fix."""


class InvalidEventError(StoreError, ValueError):
    """An event or a user id was refused before it was stored (empty / oversized / non-UTF-8 id,
    bad timestamp); the message names the field and the fix."""


# -- the learner (operations area) ------------------------------------------------------------------
class LearnerError(FsRecError):
    """The online learner could not fit, re-fine-tune or roll out; what is served is unchanged."""
