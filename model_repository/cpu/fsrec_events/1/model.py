"""Triton python-backend models in front of the ranker: serving by user id, and event intake.

Copied verbatim into ``<repo>/fsrec_user/1/model.py`` and ``<repo>/fsrec_events/1/model.py`` by
``exporters.user_repository``; the config parameter ``role`` says which one it is:

- ``recommend`` (``fsrec_user``, the lookup-then-rank pattern of Merlin's Triton ensembles, as
  BLS): ``user_id`` [B, 1] BYTES + optional ``recent_items`` [B, R] int64 -> the user's history
  and per-user parameters from the store (one read for the whole dynamic batch) -> ONE BLS call
  of the ranker per length bucket, pinned to the ranker version whose weights' fingerprint the
  parameters were fitted on -> ``top_items``, ``top_scores``, ``source``, ``ranker_version``.
  Parameters fitted on another fingerprint are never sent (the user gets the ``history``
  answer); a user with no history and no recent items gets the popularity list
  (``popularity.json``), marked ``popularity``.
- ``record`` (``fsrec_events``): ``user_id``, ``item_id`` (raw), optional ``timestamp``,
  ``event_id`` -> one atomic, idempotent append to the store's event log -> ``accepted``.

Input/output names and dtypes come from ``args["model_config"]`` (as python_backend's add_sub
example does), by position: each role reads and answers its tensors in the order of
``ROLE_INPUTS`` / ``ROLE_OUTPUTS``; a config that declares other counts is refused at load. Runs
inside the stub with the project's environment (``EXECUTION_ENV_PATH``), so it reads the ranker's
tensor and file names from ``fsrec_serve.contract``, pads with ``fsrec_serve.idmap.pad_left`` and
uses ``fsrec_serve.store`` directly: the store URL is the ``store`` parameter or
``$FSREC_STORE``, the user-id key file ``$FSREC_USER_KEY_FILE`` (or the state folder's).
User ids are hashed on arrival and never logged. A store that is down answers UNAVAILABLE naming
the store; the model stays up and answers again once the store is back.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np

from fsrec_serve.contract import (
    DEFAULT_MODEL_NAME,
    INPUT_ITEM_IDS,
    INPUT_USER_PARAMS,
    ITEM_IDS_DTYPE,
    ITEM_MAP_FILE,
    MASK_VALUE,
    MAX_RECENT_ITEMS,
    MAX_USER_ID_BYTES,
    META_FILE,
    ONNX_FILE,
    OUTPUT_TOP_ITEMS,
    OUTPUT_TOP_SCORES,
    POPULARITY_FILE,
    SCORE_DTYPE,
)
from fsrec_serve.idmap import pad_left

ROLES = ("recommend", "record")
# what each role reads and answers, in the order its config.pbtxt declares them (names and types
# are the config's)
ROLE_INPUTS = {"recommend": ("user id", "recent items"), "record": ("user id", "item id", "timestamp", "event id")}
ROLE_OUTPUTS = {"recommend": ("items", "scores", "source", "ranker version"), "record": ("accepted",)}


# -- pure helpers (unit-tested) -----------------------------------------------------------------
def io_of(model_config: dict, role: str, to_numpy) -> tuple[list, dict]:
    """The config's (input names, {output name: numpy dtype}) of ``role``, in the role's order.
    ``to_numpy``: ``pb_utils.triton_string_to_numpy``. Raises ValueError naming what the config
    declares when its counts do not fit the role."""
    inputs, outputs = list(model_config.get("input") or []), list(model_config.get("output") or [])
    if len(inputs) != len(ROLE_INPUTS[role]) or len(outputs) != len(ROLE_OUTPUTS[role]):
        raise ValueError(
            f"config.pbtxt of role {role!r} declares inputs {[i.get('name') for i in inputs]} and outputs "
            f"{[o.get('name') for o in outputs]}; the role reads {list(ROLE_INPUTS[role])} and answers "
            f"{list(ROLE_OUTPUTS[role])}, in that order: rebuild the repository with `fsrec repository`")
    return [str(i["name"]) for i in inputs], {str(o["name"]): to_numpy(o["data_type"]) for o in outputs}


def decode_id(value, what: str, max_bytes: int = MAX_USER_ID_BYTES) -> tuple[str | None, str | None]:
    """A BYTES element -> (text, None) or (None, message). The message never holds the id."""
    raw = value if isinstance(value, (bytes, bytearray)) else str(value).encode()
    if len(raw) > max_bytes:
        return None, f"{what} is {len(raw)} bytes; at most {max_bytes} are accepted: send a shorter id"
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None, f"{what} is not valid UTF-8: send ids as UTF-8 text"
    if not text.strip():
        return None, f"{what} is empty: send a non-empty id"
    return text, None


def merge_history(stored: list, recent, num_items: int, max_len: int) -> list:
    """Stored history + the request's recent items (0 = padding, unknown indices dropped),
    newest ``max_len`` kept, oldest first."""
    extra = [int(i) for i in np.asarray(recent if recent is not None else [], dtype=np.int64).reshape(-1)]
    items = [int(i) for i in stored] + [i for i in extra if 1 <= i <= num_items]
    return items[-max_len:]


def bucket_of(length: int, buckets) -> int:
    for b in buckets:
        if length <= b:
            return int(b)
    return int(buckets[-1])


def newest_version(model_dir: Path, meta_file: str = META_FILE) -> tuple[int, dict]:
    """(newest numeric version folder holding ``meta_file``, its meta) or (0, {})."""
    best = (0, {})
    if model_dir.is_dir():
        for p in model_dir.iterdir():
            if p.is_dir() and p.name.isdigit() and (p / meta_file).exists() and int(p.name) > best[0]:
                best = (int(p.name), json.loads((p / meta_file).read_text()))
    return best


class _Ranker:
    """The ranker's newest version as the repository shows it (re-read when the folder changes).

    ``in_process``: also an ONNX Runtime session of that version's ``model.onnx``, so that the
    ranking runs inside this model (no second stub round trip); version, fingerprint, item map
    and session always come from the same version folder. A version whose files cannot be
    loaded (yet) is skipped: the previous one keeps answering."""

    def __init__(self, model_dir: Path, in_process: bool = False, threads: int = 1):
        self.dir, self.stamp, self.in_process, self.threads = model_dir, None, in_process, threads
        self.version, self.meta, self.item_index, self.session = 0, {}, {}, None

    def refresh(self) -> None:
        try:
            stamp = (self.dir.stat().st_mtime_ns, tuple(sorted(p.name for p in self.dir.iterdir())))
        except OSError:
            return
        if stamp == self.stamp:
            return
        version, meta = newest_version(self.dir)
        item_index, session = {}, None
        vdir = self.dir / str(version)
        try:
            if version and (vdir / ITEM_MAP_FILE).exists():
                raw = json.loads((vdir / ITEM_MAP_FILE).read_text())
                ids = raw.get("raw_ids", raw) if isinstance(raw, dict) else raw
                item_index = {str(r): i + 1 for i, r in enumerate(ids)}
            if version and self.in_process:
                session = self._session(vdir / ONNX_FILE)
        except Exception:  # noqa: BLE001 - a half-written version: keep the previous one, retry later
            if self.version:
                return
        self.version, self.meta, self.item_index, self.session, self.stamp = version, meta, item_index, session, stamp

    def _session(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = self.threads, 1, 3
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


class TritonPythonModel:
    """Triton entry point (module docstring)."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        from fsrec_serve.store import open_store
        from fsrec_serve.store.keys import UserKeyer

        self.pb = pb_utils
        self.config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (self.config.get("parameters") or {}).items()}
        self.role = params.get("role", "recommend")
        if self.role not in ROLES:
            raise pb_utils.TritonModelException(f"parameter role={self.role!r}: choose one of {ROLES}")
        try:
            self.inputs, self.outputs = io_of(self.config, self.role, pb_utils.triton_string_to_numpy)
        except ValueError as e:
            raise pb_utils.TritonModelException(str(e)) from None
        self.out_names = list(self.outputs)
        self.max_id_bytes = int(params.get("max_user_id_bytes", "") or MAX_USER_ID_BYTES)
        self.max_recent = int(params.get("max_recent_items", "") or MAX_RECENT_ITEMS)
        self.buckets = tuple(int(b) for b in params.get("length_buckets", "").split(",") if b.strip())
        self.ranker_name = params.get("ranker", "") or DEFAULT_MODEL_NAME
        repo_root = Path(args["model_repository"]).parent
        in_process = params.get("ranking", "bls") == "onnxruntime"  # else BLS calls of the ranker model
        self.ranker = _Ranker(repo_root / self.ranker_name, in_process, int(params.get("intra_op_num_threads", "1") or 1))
        self.ranker.refresh()
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        pop = version_dir / POPULARITY_FILE
        self.popularity = json.loads(pop.read_text()) if pop.exists() else {"items": [], "scores": []}
        self.store = open_store(params.get("store") or None)
        self.keyer = UserKeyer()

    # -- responses ----------------------------------------------------------------------------
    def _error(self, message: str, code: str = "INVALID_ARG"):
        pb = self.pb
        try:
            err = pb.TritonError(message, getattr(pb.TritonError, code))
        except (AttributeError, TypeError):
            err = pb.TritonError(message)
        return pb.InferenceResponse(output_tensors=[], error=err)

    def _tensor(self, name: str, value):
        return self.pb.Tensor(name, np.asarray(value, dtype=self.outputs[name]))

    def _read(self, request, name):
        t = self.pb.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def _user_keys(self, request) -> tuple[list, str | None]:
        ids = self._read(request, self.inputs[0])
        if ids is None or ids.size == 0:
            return [], f"input '{self.inputs[0]}' is missing or empty: send one user id per row"
        keys = []
        for value in ids.reshape(-1):
            text, err = decode_id(value, f"input '{self.inputs[0]}'", self.max_id_bytes)
            if err:
                return [], err
            keys.append(self.keyer.key(text))
        return keys, None

    def execute(self, requests):
        from fsrec_serve.errors import StoreError, StoreUnavailableError

        try:
            return self._recommend(requests) if self.role == "recommend" else self._record(requests)
        except StoreUnavailableError as e:
            return [self._error(f"{e}", "UNAVAILABLE") for _ in requests]
        except StoreError as e:
            return [self._error(f"{e}", "INTERNAL") for _ in requests]
        except Exception as e:  # noqa: BLE001 - a failure answers every request; the model stays up
            return [self._error(f"{self.role} failed: {e}", "INTERNAL") for _ in requests]

    # -- role: record ----------------------------------------------------------------------------
    def _events_of(self, request, now: float):
        from fsrec_serve.store import Event

        keys, err = self._user_keys(request)
        if err:
            return None, err
        item_in, ts_in, eid_in = self.inputs[1:]
        items, ts, eids = self._read(request, item_in), self._read(request, ts_in), self._read(request, eid_in)
        n = len(keys)
        if items is None or items.size != n:
            return None, f"input '{item_in}' must hold one item id per user id ({n})"
        if ts is not None and (ts.size != n or not np.isfinite(ts).all()):
            return None, f"input '{ts_in}' must hold {n} finite epoch seconds (or be left out: now)"
        events = []
        for j in range(n):
            raw_item, err = decode_id(items.reshape(-1)[j], f"input '{item_in}'", 256)
            if err:
                return None, err
            eid = uuid.uuid4().hex
            if eids is not None:
                eid, err = decode_id(eids.reshape(-1)[j], f"input '{eid_in}'", 128)
                if err:
                    return None, err
            events.append(Event(eid, keys[j], self.ranker.item_index.get(raw_item, 0),
                                float(ts.reshape(-1)[j]) if ts is not None else now, raw_item))
        return events, None

    def _record(self, requests):
        self.ranker.refresh()
        now = time.time()
        per_request, batch = [], []
        for r in requests:
            events, err = self._events_of(r, now)
            per_request.append((events, err))
            batch += events or []
        flags = self.store.append(batch) if batch else []
        out, pos = [], 0
        for events, err in per_request:
            if err:
                out.append(self._error(err))
                continue
            got = np.asarray(flags[pos:pos + len(events)], dtype=np.int32).reshape(-1, 1)
            pos += len(events)
            out.append(self.pb.InferenceResponse(output_tensors=[self._tensor(self.out_names[0], got)]))
        return out

    # -- role: recommend ------------------------------------------------------------------------
    def _rows_of(self, request):
        keys, err = self._user_keys(request)
        if err:
            return None, err
        name = self.inputs[1]
        recent = self._read(request, name)
        if recent is not None:
            if recent.ndim != 2 or recent.shape[0] != len(keys):
                return None, f"input '{name}' must have shape [{len(keys)}, R], got {list(recent.shape)}"
            if recent.shape[1] > self.max_recent:
                return None, (f"input '{name}' holds {recent.shape[1]} items per user; at most "
                              f"{self.max_recent} are accepted: record older events with the events model")
        return [(k, None if recent is None else recent[j]) for j, k in enumerate(keys)], None

    def _recommend(self, requests):
        self.ranker.refresh()
        meta, version = self.ranker.meta, self.ranker.version
        if not version:
            return [self._error(f"the ranker '{self.ranker_name}' has no version with fsrec_meta.json in the "
                                "repository: build it with `fsrec repository`", "UNAVAILABLE") for _ in requests]
        parsed = [self._rows_of(r) for r in requests]
        keys = sorted({k for rows, _ in parsed for k, _ in rows or []})
        states = self.store.states(keys)
        n_items, max_len = int(meta["num_items"]), int(meta["max_seq_len"])
        dim, fp = int(meta.get("user_params_dim", 0)), str(meta.get("fingerprint", ""))
        rows = []  # (request index, row index, history, params or None)
        for r, (rr, err) in enumerate(parsed):
            for j, (key, recent) in enumerate(rr or []):
                st = states.get(key)
                hist = merge_history(st.history if st else [], recent, n_items, max_len)
                params = st.params_for(fp) if (st and dim) else None
                if params is not None and not np.any(params):  # zeros = the per-user rule kept zero-shot
                    params = None
                rows.append((r, j, hist, params))
        answers = self._rank([x for x in rows if x[2]], version, dim)
        return self._responses(parsed, rows, answers)

    def _rank(self, rows, version: int, dim: int) -> dict:
        """One BLS call of the ranker per length bucket -> {(request, row): (items, scores, source, version)}."""
        buckets = self.buckets or (int(self.ranker.meta["max_seq_len"]),)
        groups: dict = {}
        for x in rows:
            groups.setdefault(bucket_of(len(x[2]), buckets), []).append(x)
        out = {}
        for width, members in sorted(groups.items()):
            ids = pad_left([hist for _, _, hist, _ in members], width)
            up = np.zeros((len(members), max(dim, 1)), dtype=SCORE_DTYPE)
            for i, (_, _, _, params) in enumerate(members):
                if params is not None:
                    up[i] = params
            pinned = any(m[3] is not None for m in members)
            items, scores, answered = self._call_ranker(ids, up if dim else None, version if pinned else -1)
            if items is None and pinned:  # the pinned version is not loaded (yet): no parameters
                items, scores, answered = self._call_ranker(ids, np.zeros_like(up) if dim else None, -1)
                members = [(a, b, c, None) for a, b, c, _ in members]
            if items is None:
                raise RuntimeError(answered)
            for i, (r, j, _, params) in enumerate(members):
                out[(r, j)] = (items[i], scores[i], "personal" if params is not None else "history", answered)
        return out

    def _call_ranker(self, ids, up, version: int):
        session = self.ranker.session
        if session is not None and version in (-1, self.ranker.version):
            feed = {INPUT_ITEM_IDS: ids, **({INPUT_USER_PARAMS: up} if up is not None else {})}
            items, scores = session.run([OUTPUT_TOP_ITEMS, OUTPUT_TOP_SCORES], feed)
            return items, scores, str(self.ranker.version)
        pb = self.pb
        inputs = [pb.Tensor(INPUT_ITEM_IDS, ids)] + ([pb.Tensor(INPUT_USER_PARAMS, up)] if up is not None else [])
        req = pb.InferenceRequest(model_name=self.ranker_name, model_version=int(version),
                                  requested_output_names=[OUTPUT_TOP_ITEMS, OUTPUT_TOP_SCORES], inputs=inputs)
        resp = req.exec()
        if resp.has_error():
            return None, None, f"ranker '{self.ranker_name}' failed: {resp.error().message()}"
        got = {t.name(): t.as_numpy() for t in resp.output_tensors()}
        answered = str(version) if version > 0 else str(self.ranker.version)
        return got[OUTPUT_TOP_ITEMS], got[OUTPUT_TOP_SCORES], answered

    def _responses(self, parsed, rows, answers):
        k = int(self.config["output"][0]["dims"][0])
        pop_items = np.zeros(k, dtype=ITEM_IDS_DTYPE)
        pop_scores = np.full(k, MASK_VALUE, dtype=SCORE_DTYPE)
        n = min(k, len(self.popularity["items"]))
        pop_items[:n], pop_scores[:n] = self.popularity["items"][:n], self.popularity["scores"][:n]
        by_req: dict = {}
        for r, j, _, _ in rows:
            by_req.setdefault(r, []).append(answers.get((r, j), (pop_items, pop_scores, "popularity", "")))
        out = []
        for r, (rr, err) in enumerate(parsed):
            if err:
                out.append(self._error(err))
                continue
            got = by_req.get(r, [])
            items, scores, source, version = self.out_names
            out.append(self.pb.InferenceResponse(output_tensors=[
                self._tensor(items, np.stack([g[0][:k] for g in got])),
                self._tensor(scores, np.stack([g[1][:k] for g in got])),
                self._tensor(source, np.array([[g[2].encode()] for g in got], dtype=object)),
                self._tensor(version, np.array([[g[3].encode()] for g in got], dtype=object)),
            ]))
        return out

    def finalize(self):
        if getattr(self, "store", None) is not None:
            self.store.close()
