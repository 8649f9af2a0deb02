"""The rollout's smoke check of a candidate version: ask it what a client of the served target
would (:func:`.targets.smoke_requests`), check the answers (:mod:`.answers`: well formed, equal to
ONNX Runtime's on the same graph) and keep them, so that the same requests can be asked again
after the swap (:class:`SmokeAnswers`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import RolloutError
from .answers import check_answers, compare_answers, smoke_histories
from .targets import ask, served_spec, smoke_requests, smoke_tolerance


@dataclass
class SmokeAnswers:
    """The candidate's smoke answers, asked again after the swap."""

    spec: Any  # the client's ModelSpec of the live config
    requests: list  # targets.SmokeRequest s, as a client of the target sends them
    n: int  # smoke histories
    items: Any  # np.ndarray [n, K] the candidate answered
    scores: Any  # np.ndarray [n, K]
    tol: float  # score tolerance


def client_view(control, model_name: str, spec=None, version: str = ""):
    """A view of the control's client on another model / version (same connection, no retries:
    a rollout must see failures, not paper over them) that knows the served model's ``spec``
    (so its requests are checked and carry what the target requires)."""
    c = copy.copy(control.client)
    c.model_name, c.model_version = model_name, str(version or "")
    c.spec = spec
    c._explicit_spec = spec  # noqa: SLF001 - a view, not a new client
    c.retry = type(c.retry)(0, c.retry.backoff_s, c.retry.backoff_max_s)
    return c


def smoke_candidate(control, candidate: str, vdir: Path, live_cfg: dict, meta, target: str, *, n_users: int,
                    seed: int, score_tol: float | None, valid_examples: Sequence | None,
                    record: dict) -> SmokeAnswers:
    """Ask the candidate what a client of the target would (bucket widths, required
    user_params); its answers must be well formed and ONNX Runtime's. ``record`` (the report's
    ``smoke`` dict) gets the requests' shapes and the comparison, also when the check fails."""
    from exporters.runtime import make_session, run_topk

    x = smoke_histories(meta.num_items, meta.max_seq_len, n_users, seed, valid_examples)
    spec = served_spec(live_cfg, meta.num_items)
    requests = smoke_requests(spec, x)
    session = make_session(vdir)
    ref_items, ref_scores, _ = ask(requests, len(x), lambda ids, up: (*run_topk(session, ids, user_params=up), ""))
    items, scores, _ = ask(requests, len(x), client_view(control, candidate, spec).infer_indices)
    problems = check_answers(x, items, scores, meta.num_items)
    tol = smoke_tolerance(meta.precision, target, score_tol)
    ok, stats = compare_answers(items, scores, ref_items, ref_scores, tol)
    record["requests"] = [list(r.item_ids.shape) + ([] if r.user_params is None else ["user_params"])
                          for r in requests]
    record["candidate"] = {**stats, "problems": problems, "n": int(len(x))}
    if problems or not ok:
        raise RolloutError("the candidate's answers are wrong: "
                           + "; ".join(problems or [f"served scores differ from ONNX Runtime's: {stats}"]))
    return SmokeAnswers(spec, requests, len(x), items, scores, tol)
