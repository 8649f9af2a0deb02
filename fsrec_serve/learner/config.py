"""``LearnerConfig``: everything ``fsrec learn`` needs, as one typed object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..adaptation.online import RefineConfig
from ..adaptation.peruser import PerUserConfig
from ..errors import ConfigError


@dataclass
class LearnerConfig:
    model_dir: Path  # save_pretrained folder of the SERVED model (its fingerprint = the served version's)
    store: str | None = None  # store URL (sqlite path / redis://...); None = $FSREC_STORE or the embedded file
    group: str = "learner"  # consumer group: learners sharing it split the events, each applied once
    batch_events: int = 1000  # events applied per store transaction
    fit_interval_s: float = 1.0  # refit the users touched since the last fit at most this often
    window: int = 20  # newest items of a user the per-user parameters are fitted on
    # the per-user fit of every refit: one learning rate and two step checkpoints (the library's
    # 3 x 3 grid costs ~2.5x more per fit; online, freshness matters more than the grid)
    # what a refit sees: "window" = the newest `window` items are the whole support (what the
    # replays measured); "history" = the newest `window` items are the targets, each with the
    # full history before it (prefixes stay put as events arrive: one encoder pass per event)
    context: str = "window"
    per_user: PerUserConfig = field(default_factory=lambda: PerUserConfig(lrs=(0.1,), steps=(10, 25)))
    poll_s: float = 0.1  # sleep when no event is pending
    refine_every_events: int = 0  # re-fine-tune after this many applied events (0 = off)
    refine_every_s: float = 0.0  # re-fine-tune on this schedule, seconds (0 = off)
    min_refine_users: int = 20  # fewest users with new events a re-fine-tune needs
    replay_users: int = 2000  # old users' histories replayed during a re-fine-tune (sampled)
    refine: RefineConfig = field(default_factory=RefineConfig)  # the re-fine-tune and its guards
    server_url: str | None = None  # Triton (gRPC host:port) to roll a new version out to; None = no rollout
    repository: Path | None = None  # the folder that tritonserver reads (where new versions go)
    work_dir: Path = Path("runs/learner")  # checkpoints and exports of re-fine-tuned models
    metrics_port: int = -1  # Prometheus /metrics port (0 = any free port, -1 = off)
    # address /metrics binds: loopback by default (nothing outside the host sees it); a container
    # binds "0.0.0.0" so that Prometheus on the container network can scrape it
    metrics_host: str = "127.0.0.1"
    # event partitions of a redis store (None = the store URL's ?partitions=N, else 1); every
    # writer (the Triton front models) must use the same count: put it in the shared store URL
    partitions: int | None = None
    partition: int | None = None  # the one partition this learner owns (None = all of them)
    max_backoff_s: float = 5.0  # longest wait between retries while the store is down

    def __post_init__(self) -> None:
        self.model_dir, self.work_dir = Path(self.model_dir), Path(self.work_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"model_dir {self.model_dir} holds no saved model (config.json): pass the "
                              "save_pretrained folder of the served model (the main job writes runs/pipeline/served)")
        if self.context not in ("window", "history"):
            raise ConfigError(f"context must be 'window' or 'history', got {self.context!r}")
        if self.batch_events < 1 or self.window < 2:
            raise ConfigError("batch_events must be >= 1 and window >= 2 (a pair to fit + an item to check)")
        if self.fit_interval_s < 0 or self.poll_s <= 0 or self.max_backoff_s <= 0:
            raise ConfigError("fit_interval_s must be >= 0; poll_s and max_backoff_s > 0")
        if self.refine_every_events < 0 or self.refine_every_s < 0:
            raise ConfigError("refine_every_events and refine_every_s must be >= 0 (0 = off)")
        if self.partitions is not None and (isinstance(self.partitions, bool) or not isinstance(self.partitions, int)
                                            or self.partitions < 1):
            raise ConfigError(f"partitions must be an integer >= 1, got {self.partitions!r}")
        if self.partition is not None and (isinstance(self.partition, bool) or not isinstance(self.partition, int)
                                           or self.partition < 0
                                           or (self.partitions is not None and self.partition >= self.partitions)):
            bound = f" and < partitions ({self.partitions})" if self.partitions is not None else ""
            raise ConfigError(f"partition (the one this learner owns) must be an integer >= 0{bound}, "
                              f"got {self.partition!r}")
        if (self.server_url is None) != (self.repository is None):
            raise ConfigError("give both server_url and repository (the folder tritonserver reads) to roll "
                              "re-fine-tuned versions out, or neither")
