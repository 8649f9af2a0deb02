"""Model control: Triton's repository / load / unload API with the admin key, version policies.

A thin wrapper over :class:`~fsrec_serve.client.RecommenderClient` (which sends the admin key
header on model-control calls and maps Triton's errors) that adds what operations need:

- the repository index as typed :class:`VersionState` rows (state and Triton's *reason*, which
  carries the load error of a failed version);
- ``load_versions(model, [v, ...])``: (re)load a model with a ``version_policy`` that serves
  exactly those versions, built on the model's *live* config (so machine-specific parameters such
  as the python backend's ``EXECUTION_ENV_PATH`` are kept) - old versions keep answering until
  the new ones are ready;
- ``load_candidate(...)``: load a version's files under another model name through the load
  API's ``files`` field (nothing is written to the repository; no client sees it by default);
- failures raise :class:`~fsrec_serve.errors.ModelControlError` quoting Triton's reason, and
  requests without (or with a wrong) admin key raise
  :class:`~fsrec_serve.errors.AuthorizationError`.

Restricted endpoints (``fsrec serve --restricted-api-key`` / the container's entrypoint): HTTP
needs the header ``fsrec-admin-key: <key>``, gRPC the metadata
``triton-grpc-protocol-fsrec-admin-key: <key>``; inference, health and metadata stay open.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..contract import CONFIG_FILE
from ..errors import ConfigError, ModelControlError, RepositoryError

log = logging.getLogger(__name__)

READY = "READY"


@dataclass(frozen=True)
class VersionState:
    """One row of Triton's repository index."""

    name: str  # model name
    version: int | None  # version number (None: the model is known but has no version row)
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE, ... ("" = never loaded)
    reason: str = ""  # why it is not READY (Triton's load error message, "unloaded", ...)


def parse_index(rows: Sequence[Mapping[str, Any]]) -> list[VersionState]:
    """Triton's repository index (HTTP list or gRPC JSON rows) -> VersionState rows."""
    out = []
    for r in rows or []:
        v = r.get("version")
        out.append(VersionState(
            name=str(r.get("name", "")),
            version=int(v) if v not in (None, "") and str(v).isdigit() else None,
            state=str(r.get("state", "") or ""),
            reason=str(r.get("reason", "") or ""),
        ))
    return out


def with_version_policy(config: Mapping[str, Any], versions: Sequence[int] | None,
                        name: str | None = None) -> dict:
    """A copy of a model config (Triton JSON form) that serves exactly ``versions``
    (``None`` = only the latest version), optionally renamed."""
    cfg = copy.deepcopy(dict(config))
    cfg = dict(cfg.get("config", cfg))  # gRPC as_json wraps it
    if versions is None:
        cfg["version_policy"] = {"latest": {"num_versions": 1}}
    else:
        vs = sorted({int(v) for v in versions})
        if not vs or vs[0] < 1:
            raise ConfigError(f"versions must be positive integers, got {list(versions)}")
        cfg["version_policy"] = {"specific": {"versions": vs}}
    if name is not None:
        cfg["name"] = name
    return cfg


def merge_config(config: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict:
    """``config`` with top-level fields replaced by ``overrides`` (Triton JSON form), e.g.
    ``{"dynamic_batching": {"max_queue_delay_microseconds": 200}}``. The name, inputs and outputs
    cannot be changed by a rollout (they are the serving contract)."""
    cfg = copy.deepcopy(dict(config))
    for k, v in (overrides or {}).items():
        if k in ("name", "input", "output"):
            raise ConfigError(f"config override {k!r} is not allowed: a new version keeps the model's name and I/O")
        cfg[k] = copy.deepcopy(v)
    return cfg


def validate_config(config: Mapping[str, Any]) -> None:
    """Refuse a config (Triton JSON form) that is not a ModelConfig: unknown fields, wrong types
    (ConfigError naming the field). Triton checks the semantics when it loads the model."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc

    try:
        json_format.ParseDict(dict(config), mc.ModelConfig())
    except json_format.ParseError as e:
        raise ConfigError(f"invalid model config: {e}") from None


_GLOG = re.compile(r'^[EWI]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "?(.*?)"?$')


def _glog_message(line: str) -> str:
    m = _GLOG.match(line)
    return m.group(1) if m else line


def write_config_pbtxt(model_dir: str | Path, config: Mapping[str, Any] | None = None, *,
                       versions: Sequence[int] | None = None, overrides: Mapping[str, Any] | None = None) -> Path:
    """Rewrite ``<model_dir>/config.pbtxt`` atomically: the file's own content with
    ``overrides`` (top-level fields) applied and the version policy set to ``versions`` (so a
    restarted server serves what the running one serves). Parsed and written through Triton's
    ModelConfig protobuf."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = Path(model_dir) / CONFIG_FILE
    try:
        text = path.read_text()
        msg = text_format.Parse(text, mc.ModelConfig())
    except FileNotFoundError:
        raise RepositoryError(f"{path} does not exist: is {model_dir} a model folder of the repository?") from None
    except text_format.ParseError as e:
        raise RepositoryError(f"{path} is not a valid Triton ModelConfig ({e}); fix or regenerate it") from None
    for key, value in (overrides or {}).items():
        msg.ClearField(key)
        json_format.ParseDict({key: value}, msg)
    if versions is not None:
        msg.ClearField("version_policy")
        msg.version_policy.specific.versions.extend(sorted({int(v) for v in versions}))
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    tmp = path.with_name(f".{CONFIG_FILE}.tmp")
    tmp.write_text(header + text_format.MessageToString(msg))
    tmp.replace(path)
    return path


class ModelControl:
    """Model control of one Triton server (HTTP or gRPC), admin key included.

    ``ModelControl(url, protocol="http", admin_key=None, model_name="fsrec", timeout_s=10,
    control_timeout_s=120)`` or ``ModelControl(client=<RecommenderClient>)``. The admin key
    defaults to env ``FSREC_ADMIN_KEY``, else the key file ``fsrec serve`` generated on this
    machine (``fsrec_serve.settings.admin_key_path()``).
    """

    def __init__(self, url: str | None = None, protocol: str | None = None, *, admin_key: str | None = None,
                 model_name: str | None = None, timeout_s: float = 10.0, control_timeout_s: float = 120.0,
                 client=None, server_log: Callable[[], str] | None = None):
        if client is None:
            from ..client import RecommenderClient

            client = RecommenderClient(url, protocol=protocol, admin_key=admin_key, model_name=model_name,
                                       timeout_s=timeout_s, control_timeout_s=control_timeout_s)
            self._owns_client = True
        else:
            self._owns_client = False
        self.client = client  # the RecommenderClient that carries the calls (and the admin key)
        self.model_name = client.model_name  # default model of every call
        # returns the server's log text (e.g. TritonServer.log_text): failed loads then quote the
        # server's own reason, which Triton's API does not always return (config errors)
        self.server_log = server_log

    # -- reading ------------------------------------------------------------------------------
    def index(self) -> list[VersionState]:
        """Every model/version Triton knows in its repository, with state and reason."""
        return parse_index(self.client.repository_index())

    def versions(self, model: str | None = None) -> dict[int, VersionState]:
        """{version: state} of ``model`` (versions Triton has seen)."""
        name = model or self.model_name
        return {s.version: s for s in self.index() if s.name == name and s.version is not None}

    def ready_versions(self, model: str | None = None) -> list[int]:
        """Versions of ``model`` that are READY (serving), ascending."""
        return sorted(v for v, s in self.versions(model).items() if s.state == READY)

    def config(self, model: str | None = None) -> dict:
        """The live config of a loaded ``model`` (Triton JSON form)."""
        name = model or self.model_name
        return dict(self.client.model_config() if name == self.model_name else self._other(name).model_config())

    def _other(self, name: str):
        c = copy.copy(self.client)
        c.model_name = name
        return c

    # -- changing -----------------------------------------------------------------------------
    def load(self, model: str | None = None, *, config: Mapping[str, Any] | None = None,
             files: Mapping[str, bytes] | None = None) -> None:
        """Load (or reload) ``model``, optionally with a config override (and files). Raises
        ModelControlError with Triton's reason when a version fails to load."""
        name = model or self.model_name
        if config is not None:
            validate_config(config)
        mark = len(self._log())
        try:
            self.client.load_model(name, config=json.dumps(config) if config is not None else None, files=files)
        except ModelControlError as e:
            raise ModelControlError(self._explain(name, e, log_from=mark)) from e

    def unload(self, model: str | None = None, *, wait_s: float = 30.0) -> None:
        """Unload every version of ``model`` and wait (up to ``wait_s``) until none is READY."""
        name = model or self.model_name
        self.client.unload_model(name)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not any(s.name == name and s.state in (READY, "UNLOADING") for s in self.index()):
                return
            time.sleep(0.1)

    def load_versions(self, versions: Sequence[int] | None, model: str | None = None, *,
                      base_config: Mapping[str, Any] | None = None,
                      overrides: Mapping[str, Any] | None = None) -> list[int]:
        """Serve exactly ``versions`` of ``model`` (``version_policy: specific``), built on the
        live config (or ``base_config`` when the model is not loaded). Versions already loaded
        keep answering while the others load; versions left out are unloaded once the load
        succeeded. Returns the READY versions afterwards."""
        name = model or self.model_name
        base = base_config if base_config is not None else self.config(name)
        cfg = with_version_policy(merge_config(base, overrides), versions, name=name)
        self.load(name, config=cfg)
        ready = self.ready_versions(name)
        missing = sorted(set(versions or []) - set(ready))
        if missing:
            raise ModelControlError(self._explain(name, None, missing))
        return ready

    def load_candidate(self, candidate_name: str, version: int, version_dir: str | Path,
                       base_config: Mapping[str, Any]) -> None:
        """Load the files of ``version_dir`` as version ``version`` of a separate model
        ``candidate_name`` (config = ``base_config`` renamed, serving that version only), through
        the load API's ``files`` field: nothing is written to the repository and clients of the
        real model never see it."""
        vdir = Path(version_dir)
        files = {f"file:{version}/{p.name}": p.read_bytes() for p in sorted(vdir.iterdir()) if p.is_file()}
        if not files:
            raise RepositoryError(f"{vdir} holds no files: build the version first")
        cfg = with_version_policy(base_config, [version], name=candidate_name)
        self.load(candidate_name, config=cfg, files=files)

    def _log(self) -> str:
        if self.server_log is None:
            return ""
        try:
            return self.server_log() or ""
        except Exception:  # noqa: BLE001 - the log is a bonus, never a new failure
            return ""

    def _explain(self, name: str, err: Exception | None, missing: Sequence[int] = (), log_from: int = 0) -> str:
        """Triton's error, the index rows of the versions that are not READY, and the server
        log's lines about ``name`` (when a log source is known)."""
        parts = [str(err).strip()] if err is not None else [f"model {name!r}: version(s) {list(missing)} did not become READY"]
        try:
            rows = [s for s in self.index() if s.name == name and s.state != READY]
        except Exception:  # noqa: BLE001 - the explanation must not hide the original error
            rows = []
        for s in rows:
            if s.reason and s.reason != "unloaded" and s.reason not in parts[0]:
                parts.append(f"version {s.version}: {s.state}: {s.reason}")
        lines = []
        for ln in self._log()[log_from:].splitlines():
            if not (ln.startswith("E") and f"'{name}'" in ln and "modification time" not in ln):
                continue
            msg = _glog_message(ln.strip()).split("\\n", 1)[0].strip()  # drop the stub's traceback
            core = msg.split(": ", 1)[-1][:60]
            if core and core not in parts[0] and msg not in lines:  # only what the API did not say
                lines.append(msg)
        if lines:
            parts.append("server log: " + " | ".join(lines[-4:]))
        elif "failed to poll from model repository" in parts[0]:
            parts.append(
                "Triton refused the model's configuration (its API does not say why: the server log has a line "
                f"\"Poll failed for model directory '{name}': <reason>\"); check the config fields you changed "
                "(max_batch_size, dynamic_batching, instance_group, ...)"
            )
        return "; ".join(parts)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> "ModelControl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
