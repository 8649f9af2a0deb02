"""The fingerprint of a model's weights: which model per-user parameters were fitted on.

Per-user parameters are offsets in one model's state space; served with another model's weights
they are meaningless. The export writes the fingerprint into ``fsrec_meta.json``, the store keeps
it beside each user's parameters, and the serving lookup sends parameters only to the version
whose fingerprint matches.
"""

from __future__ import annotations

import hashlib

import torch

FINGERPRINT_CHARS = 16  # hex characters kept of the SHA-256


@torch.no_grad()
def model_fingerprint(model) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes), in name order -> 16 hex.

    Equal for a model and its ``save_pretrained`` / ``from_pretrained`` round trip; any change of
    any weight changes it. PEFT wrappers are unwrapped to the base FsRecModel first."""
    base = getattr(model, "fsrec", None) or model
    if hasattr(base, "get_base_model") and not hasattr(base, "item_vectors"):
        base = base.get_base_model()
    h = hashlib.sha256()
    seen = set()
    for name, t in sorted(base.state_dict(keep_vars=False).items()):
        key = (t.data_ptr(), tuple(t.shape)) if t.numel() else None
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if key in seen:  # a tied weight: its name and shape count, its bytes once
            continue
        seen.add(key)
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:FINGERPRINT_CHARS]
