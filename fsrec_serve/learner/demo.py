"""The live loop shown on one cold user (the main job's last step): recommendations by user id
before any event, then after a few recorded events were learned from."""

from __future__ import annotations

from typing import Callable, Sequence

from .config import LearnerConfig
from .worker import Learner


def show_loop(client, learner_config: LearnerConfig, user: str, events: Sequence[tuple[str, float]],
              next_item: str | None, names: dict, echo: Callable[[str], None], top_k: int = 10) -> dict:
    """Ask for ``user``'s top-``top_k`` by id, record ``events`` [(raw item, timestamp)] through the
    server, let a learner apply and fit them, ask again; print both lists with titles."""

    def show(rec, label: str) -> None:
        echo(f"   {label}: top-{top_k} by user id ({rec.source}, ranker version {rec.model_version or '-'})")
        for it, sc in zip(rec.items, rec.scores):
            mark = "  <- the user's actual next item" if it == next_item else ""
            echo(f"     {sc:7.3f} {it:>5} {names.get(it, '')}{mark}")

    before = client.recommend_for_user(user, k=top_k)
    show(before, f"cold user {user} before any event")
    flags = client.record_many([(user, item, ts, f"demo-{user}-{j}") for j, (item, ts) in enumerate(events)])
    echo(f"   recorded {sum(flags)} events through fsrec_events (oldest first):")
    for item, _ in events:
        echo(f"     - {item:>5} {names.get(item, '')}")
    learner = Learner(learner_config)
    try:
        stats = learner.run(until_idle=True, max_seconds=120)
    finally:
        learner.close()
    echo(f"   learner: {stats.events} events applied, {stats.users_refit} user's parameters fitted "
         f"(model {learner.fingerprint})")
    after = client.recommend_for_user(user, k=top_k)
    show(after, "after the events")
    return {"user": user, "before": {"items": before.items, "source": before.source},
            "after": {"items": after.items, "source": after.source}, "next_item": next_item,
            "hit_before": next_item in before.items, "hit_after": next_item in after.items}
