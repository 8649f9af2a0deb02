"""Adaptation artifacts: what a few-shot adaptation adds to a base model, saved and reloaded.

Layout of an artifact folder::

    fsrec_adapt.json           strategy, AdaptConfig, info (inner scores, candidates, timing),
                               base model fingerprint, size
    adapter/                   PEFT adapter (save_pretrained of the PeftModel):
                               adapter_config.json + adapter_model.safetensors   (PEFT strategies)
    tensors.safetensors        trained tensors outside PEFT, by FsRecModel parameter name
                               (head_only: output_bias + rating_head; full: every parameter;
                               prefix/prompt: output_bias)

The base model itself is never copied into the artifact: ``load_adapted(base_dir, artifact_dir)``
loads the base checkpoint and applies the artifact, refusing a base whose weights differ from
the one the artifact was trained on (SHA-256 fingerprint of its state dict).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import AdaptationError
from .config import MERGEABLE, PEFT_STRATEGIES, AdaptConfig
from .strategies import attach_adapter, fsrec_of

META_FILE = "fsrec_adapt.json"
ADAPTER_DIR = "adapter"
TENSORS_FILE = "tensors.safetensors"
FORMAT_VERSION = 1


def model_fingerprint(model) -> str:
    """SHA-256 over the base FsRecModel's state dict (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    sd = fsrec_of(model).state_dict()
    for name in sorted(sd):
        t = sd[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item"):
        return x.item()
    return str(x)


@dataclass
class AdaptArtifact:
    """The trained delta of one adaptation (nothing for zero_shot)."""

    strategy: str  # the strategy that produced it (after auto's choice)
    config: dict  # AdaptConfig.to_dict() of the run
    base_fingerprint: str  # model_fingerprint() of the base model it applies to
    info: dict = field(default_factory=dict)  # inner scores, candidates, seconds, ... (JSON)
    peft_model: Any = None  # live PeftModel (in memory) or None
    tensors: dict = field(default_factory=dict)  # name -> tensor trained outside PEFT (in memory)
    path: Optional[Path] = None  # folder it was saved to / loaded from

    # -- saving ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the artifact folder (see the module docstring) and return its path.

        Written to a temporary sibling first and swapped in at the end, so a failed save (or an
        artifact with non-finite weights, refused up front) never damages what is already there."""
        d = Path(directory)
        for name, t in self.tensors.items():
            if torch.is_floating_point(t) and not torch.isfinite(t).all():
                raise AdaptationError(f"refusing to save {d}: tensor {name!r} has NaN/inf values (a "
                                      "diverged adaptation); refit with a lower lr")
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
        try:
            self._write(tmp)
            if d.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{d.name}.old.", dir=d.parent))
                os.replace(d, old / "x")
                os.replace(tmp, d)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, d)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.path = d
        return d

    def _write(self, d: Path) -> None:
        files = []
        if self.peft_model is not None:
            import warnings

            with warnings.catch_warnings():
                # AdaLoRA may prune a layer's rank to 0; PEFT then warns about "zero-sized"
                # tensors as if they were unsharded DeepSpeed/FSDP weights. They reload fine.
                warnings.filterwarnings("ignore", message=".*invalid shape.*")
                self.peft_model.save_pretrained(str(d / ADAPTER_DIR))
            files.append(ADAPTER_DIR)
        if self.tensors:
            from safetensors.torch import save_file

            save_file({k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()},
                      str(d / TENSORS_FILE))
            files.append(TENSORS_FILE)
        self.path = d
        meta = {
            "format": FORMAT_VERSION,
            "strategy": self.strategy,
            "config": _jsonable(self.config),
            "base_fingerprint": self.base_fingerprint,
            "files": files,
            "size_kb": self.size_kb(),
            "info": _jsonable(self.info),
        }
        (d / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def size_kb(self) -> float:
        """Size of the weight files (adapter_model.safetensors + tensors.safetensors) in KB."""
        if self.path is None:
            with tempfile.TemporaryDirectory() as tmp:
                art = AdaptArtifact(self.strategy, self.config, self.base_fingerprint,
                                    peft_model=self.peft_model, tensors=self.tensors)
                art.save(tmp)
                return art.size_kb()
        total = 0
        for p in Path(self.path).rglob("*.safetensors"):
            total += p.stat().st_size
        return total / 1024.0

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> "AdaptArtifact":
        d = Path(directory)
        meta_path = d / META_FILE
        if not meta_path.exists():
            raise AdaptationError(
                f"{d} is not an adaptation artifact ({META_FILE} missing); write one with "
                "AdaptArtifact.save() or `fsrec adapt run --out DIR`"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise AdaptationError(f"{meta_path}: unsupported format {meta.get('format')!r}")
        tensors = {}
        if TENSORS_FILE in meta.get("files", []):
            from safetensors.torch import load_file

            tensors = load_file(str(d / TENSORS_FILE))
        return cls(strategy=meta["strategy"], config=meta["config"],
                   base_fingerprint=meta["base_fingerprint"], info=meta.get("info", {}),
                   tensors=tensors, path=d)

    def apply(self, base_model, check_fingerprint: bool = True):
        """A new model = a copy of ``base_model`` with this artifact applied (inference mode).

        Returns a PeftModel for lora/adalora/ia3 (``merge(...)`` folds it in) and an FsRecModel
        otherwise. ``base_model`` itself is not modified."""
        base = fsrec_of(base_model)
        if check_fingerprint:
            fp = model_fingerprint(base)
            if fp != self.base_fingerprint:
                raise AdaptationError(
                    "this adaptation artifact was trained on another base model (fingerprint "
                    f"{self.base_fingerprint[:12]}..., given {fp[:12]}...); load the base "
                    "checkpoint it was adapted from"
                )
        model = copy.deepcopy(base)
        cfg = AdaptConfig.from_dict(self.config)
        if self.strategy in PEFT_STRATEGIES:
            if self.peft_model is not None and self.path is None:
                raise AdaptationError("save() the artifact before applying it to another model")
            model = attach_adapter(model, self.strategy, str(Path(self.path) / ADAPTER_DIR), cfg)
        if self.tensors:
            target = fsrec_of(model)
            params = dict(target.named_parameters())
            missing = [k for k in self.tensors if k not in params]
            if missing:
                raise AdaptationError(f"artifact tensors {missing[:3]} do not exist in the base model")
            with torch.no_grad():
                for k, v in self.tensors.items():
                    params[k].copy_(v.to(params[k].device, params[k].dtype))
        model.eval()
        return model


def _unwrap_modules_to_save(peft_model) -> None:
    """Put the trained copies of ``modules_to_save`` (output_bias, rating_head) in place of their
    PEFT wrappers. IA3's merge_and_unload() otherwise fails on a module without ``.weight``
    (``AttributeError: 'ItemBias' object has no attribute 'weight'``, peft 0.21)."""
    from peft.utils import ModulesToSaveWrapper

    root = fsrec_of(peft_model)
    for name, module in list(root.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent = root.get_submodule(name.rsplit(".", 1)[0]) if "." in name else root
            active = module.active_adapters[0] if module.active_adapters else "default"
            setattr(parent, name.rsplit(".", 1)[-1], module.modules_to_save[active])


def merge(model, strategy: str):
    """A plain FsRecModel for export: LoRA / AdaLoRA / IA3 adapters folded into the weights with
    ``merge_and_unload()``; head_only / full / zero_shot returned as they are. Prefix and prompt
    tuning add virtual tokens (extra inputs, not weight deltas) and cannot be merged."""
    if strategy in MERGEABLE:
        _unwrap_modules_to_save(model)
        return model.merge_and_unload()
    if strategy in ("prefix", "prompt"):
        raise AdaptationError(
            f"{strategy} tuning cannot be merged into the base weights: its virtual tokens are extra "
            "inputs of every attention layer, not a weight delta. Serve it unmerged (the PyTorch "
            "model scores normally) or adapt with lora / ia3 for a mergeable export."
        )
    return fsrec_of(model)


def load_adapted(base_model_dir: str | Path, artifact_dir: str | Path, merged: bool = False):
    """Load the base checkpoint from ``base_model_dir`` and apply the artifact in ``artifact_dir``.

    ``merged=True`` returns a plain FsRecModel with the adapter folded in (LoRA-family only)."""
    from ..model import FsRecModel

    base = FsRecModel.from_pretrained(str(base_model_dir))
    art = AdaptArtifact.load(artifact_dir)
    model = art.apply(base)
    if merged:
        model = merge(model, art.strategy)
    return model
