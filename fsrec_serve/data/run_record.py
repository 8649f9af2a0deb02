"""The record of a training run: ``fsrec_run.json`` in the model folder.

``pretrain()`` (and the DDP run) write it; every command that needs the data a model was trained
on reads it: ``fsrec evaluate``, ``fsrec export``, ``fsrec quantize``, ``fsrec adapt``, the
rollout guard. ``RunRecord.splits()`` rebuilds the exact splits (same warm, cold users and items),
so held-out users stay held out wherever the model goes.

Where the data came from is a preset name (``ml-100k``, ``beauty``: found again under
``FSREC_DATA_DIR`` on any machine) or, for your own log (``--data``), its ``DataSpec`` (absolute
paths). Folders written before the spec was folded in keep it in ``data_spec.json`` beside the
record; both are read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataNotFoundError
from .spec import DataSpec, as_spec_or_name, preset_name
from .splits import SplitConfig, Splits

RUN_FILE = "fsrec_run.json"  # the record, in the model folder
LEGACY_SPEC_FILE = "data_spec.json"  # an own log's spec beside older records (read, no longer written)
SOURCE_KEYS = ("dataset", "data_spec", "split_config")  # what an export keeps of the record


@dataclass
class RunRecord:
    """Data source, split, objective and training summary of one run (``fsrec_run.json``)."""

    dataset: str  # preset name (ml-100k, beauty) or the own log's name (its DataSpec display name)
    data_spec: DataSpec | None = None  # the own log (--data); None = the preset named by dataset
    split_config: SplitConfig = field(default_factory=SplitConfig)  # how make_splits split the log
    objective: str | None = None  # "causal" or "cloze" (None = not recorded)
    best_epoch: int = 0  # 1-based epoch of the kept state
    best_valid: dict = field(default_factory=dict)  # validation metrics of that epoch
    epochs_run: int = 0  # epochs trained before stopping
    stopped_early: bool = False  # True when patience ran out
    seconds: float = 0.0  # wall-clock seconds of training (evaluations included)
    seconds_to_best: float = 0.0  # wall-clock seconds until the end of the best epoch
    peak_mb: float = 0.0  # peak resident memory of the process (MB)
    extra: dict = field(default_factory=dict)  # any other recorded key (world_size, backend), kept as is

    # -- building ------------------------------------------------------------------------
    @classmethod
    def for_source(cls, source: Any, split_config: SplitConfig | None = None, **summary) -> "RunRecord":
        """A record of ``source``: a preset name, a ``DataSpec`` or the path of a data-spec file."""
        resolved = as_spec_or_name(source)
        if isinstance(resolved, DataSpec):
            name = preset_name(resolved)
            dataset, spec = (name, None) if name else (resolved.display_name, resolved)
        else:
            dataset, spec = resolved, None
        return cls(dataset=dataset, data_spec=spec,
                   split_config=dataclasses.replace(split_config or SplitConfig()), **summary)

    @classmethod
    def for_splits(cls, splits: Splits, **summary) -> "RunRecord":
        """The record of a run on ``splits`` (their log's spec, when they were read from one)."""
        source = splits.source if splits.source is not None else splits.name
        if isinstance(source, str):
            return cls(dataset=source, split_config=dataclasses.replace(splits.config), **summary)
        return cls.for_source(source, splits.config, **summary)

    def with_source(self, source: Any) -> "RunRecord":
        """The same record (split, summary) with another data source (``--dataset`` given)."""
        other = RunRecord.for_source(source)
        return dataclasses.replace(self, dataset=other.dataset, data_spec=other.data_spec)

    def with_split(self, split_config: SplitConfig | None = None, **fields) -> "RunRecord":
        """The same record with another split config (or some of its fields: ``seed=3``)."""
        cfg = dataclasses.replace(split_config or self.split_config, **fields)
        return dataclasses.replace(self, split_config=cfg)

    # -- the data ------------------------------------------------------------------------
    @property
    def source(self) -> Any:
        """What ``load_dataset`` takes: the own log's DataSpec, else the preset name."""
        return self.data_spec if self.data_spec is not None else self.dataset

    def interactions(self, data_dir: str | Path | None = None):
        """The recorded log (``data_dir``, default ``FSREC_DATA_DIR``, is where presets are)."""
        from .readers import load_dataset

        try:
            return load_dataset(self.source, data_dir)
        except DataNotFoundError as e:
            if self.data_spec is None:
                raise
            raise DataNotFoundError(
                f"{e} (the log this model was trained on, as recorded in {RUN_FILE}); pass --data / "
                "--dataset to point at it again"
            ) from None

    def splits(self, data_dir: str | Path | None = None) -> Splits:
        """The exact splits of the run: the recorded log split with the recorded config."""
        from .splits import make_splits

        return make_splits(self.interactions(data_dir), dataclasses.replace(self.split_config))

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict[str, Any] = {"dataset": self.dataset}
        if self.data_spec is not None:
            d["data_spec"] = self.data_spec.absolute()
        d["split_config"] = dataclasses.asdict(self.split_config)
        for f in dataclasses.fields(self):
            if f.name not in SOURCE_KEYS and f.name != "extra":
                d[f.name] = getattr(self, f.name)
        return {**d, **self.extra}

    def source_dict(self) -> dict:
        """The data source and split only: what an export records (``ExportMeta.extra``)."""
        return {k: v for k, v in self.to_dict().items() if k in SOURCE_KEYS}

    @staticmethod
    def has_source(d: dict) -> bool:
        """Whether ``d`` (a record or an export's ``extra``) names its data."""
        return bool(d.get("dataset") or d.get("data_spec"))

    @classmethod
    def from_dict(cls, d: dict, where: str = "the record") -> "RunRecord":
        """Parse a record (or an export's ``extra``); keys it does not know go to ``extra``."""
        if not cls.has_source(d):
            raise ConfigError(f"{where} does not record its data set: pass --dataset (or --data)")
        d = dict(d)
        try:
            spec = d.pop("data_spec", None)
            spec = DataSpec(**spec) if isinstance(spec, dict) else None
            split = SplitConfig(**d.pop("split_config", None) or {})
        except TypeError as e:
            raise ConfigError(f"{where}: unreadable data spec or split config ({e})") from None
        names = {f.name for f in dataclasses.fields(cls)} - set(SOURCE_KEYS) - {"extra"}
        known = {k: d.pop(k) for k in list(d) if k in names}
        dataset = d.pop("dataset", None) or spec.display_name
        return cls(dataset=dataset, data_spec=spec, split_config=split, extra=d, **known)

    # -- the model folder ----------------------------------------------------------------
    def save(self, model_dir: str | Path) -> Path:
        """Write ``fsrec_run.json`` into ``model_dir`` (created)."""
        path = Path(model_dir) / RUN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def find(cls, model_dir: str | Path) -> "RunRecord | None":
        """The record of ``model_dir``, or None when it has none (a corrupt one is an error)."""
        folder = Path(model_dir)
        run, legacy = folder / RUN_FILE, folder / LEGACY_SPEC_FILE
        if not run.exists() and not legacy.exists():
            return None
        d = _read_json(run) if run.exists() else {}
        if legacy.exists() and not d.get("data_spec"):  # older folders: the spec beside the record
            d["data_spec"] = _read_json(legacy)
        return cls.from_dict(d, f"{run}")

    @classmethod
    def load(cls, model_dir: str | Path) -> "RunRecord":
        """The record of ``model_dir``; a clear error when it has none."""
        rec = cls.find(model_dir)
        if rec is None:
            raise DataNotFoundError(
                f"{model_dir} has no {RUN_FILE}: it is not the --output-dir of `fsrec train` (nor a "
                "model saved with its record); pass --dataset (or --data) to say which data it belongs to"
            )
        return rec


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{path} is unreadable ({e}); restore it from the training run's --output-dir, or delete "
            "it and pass --dataset (or --data)"
        ) from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path} is not a JSON object; restore it or delete it and pass --dataset")
    return d
