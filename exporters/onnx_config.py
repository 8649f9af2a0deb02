"""The custom Optimum ``OnnxConfig`` of the served FsRec graph.

Optimum cannot export a model class defined outside transformers on its own
(``onnx_export_from_model`` cannot infer the library, ``main_export`` reloads a plain
``BertModel`` and drops the head, see ``shared/STACK.md``). What works is a subclass of
Optimum's ``BertOnnxConfig`` that declares the served graph's own inputs and outputs with named
dynamic axes, passed to ``optimum.exporters.onnx.export``. The graph is the
:class:`exporters.export.FsRecTopKModule` wrapper:

- input ``item_ids`` int64 ``[batch_size, sequence_length]``: left-padded item indices,
  newest last, 0 = padding;
- outputs ``top_items`` int64 ``[batch_size, max_top_k]`` and ``top_scores`` float32
  ``[batch_size, max_top_k]``, best first, the user's own history masked out.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from optimum.exporters.onnx.model_configs import BertOnnxConfig
from optimum.utils import DEFAULT_DUMMY_SHAPES, DummyInputGenerator, NormalizedTextConfig

INPUT_NAME = "item_ids"  # [batch, seq] int64, left-padded indices
OUTPUT_ITEMS = "top_items"  # [batch, max_top_k] int64, item indices, best first
OUTPUT_SCORES = "top_scores"  # [batch, max_top_k] float32, their scores
BATCH_AXIS = "batch_size"  # name of the dynamic batch axis
SEQUENCE_AXIS = "sequence_length"  # name of the dynamic history-length axis


class DummyHistoryInputGenerator(DummyInputGenerator):
    """Generates valid ``item_ids``: left-padded histories of real item indices (1..num_items).

    Random token ids over BERT's vocabulary (Optimum's text generator) would include the [MASK]
    token and ids outside the score table; here every row is a plausible history: a random
    length (at least one item), left-padded with 0. Deterministic for a given ``seed``.
    """

    SUPPORTED_INPUT_NAMES = (INPUT_NAME,)

    def __init__(
        self,
        task: str,
        normalized_config: NormalizedTextConfig,
        batch_size: int = DEFAULT_DUMMY_SHAPES["batch_size"],
        sequence_length: int = DEFAULT_DUMMY_SHAPES["sequence_length"],
        seed: int = 0,
        **kwargs,
    ):
        self.task = task
        cfg = normalized_config.config
        self.num_items = int(cfg.num_items)
        self.batch_size = int(batch_size)
        # never longer than the model's position table (positions are right-aligned)
        self.sequence_length = int(min(sequence_length, cfg.max_seq_len))
        self.seed = seed

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        rng = np.random.default_rng(self.seed)
        B, L = self.batch_size, self.sequence_length
        ids = np.zeros((B, L), dtype=np.int64)
        for b in range(B):
            n = int(rng.integers(1, L + 1))
            # distinct items per history (a user rarely repeats), so that at most L items are
            # masked and the top-K stays free of masked filler for any num_items >= L + K
            k = min(n, self.num_items)
            ids[b, L - k:] = rng.choice(np.arange(1, self.num_items + 1), size=k, replace=False)
        if framework == "pt":
            import torch

            return torch.from_numpy(ids)
        return ids


class FsRecOnnxConfig(BertOnnxConfig):
    """Optimum export config of the FsRec top-K graph (one input, two outputs)."""

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyHistoryInputGenerator,)
    ATOL_FOR_VALIDATION = 1e-4
    DEFAULT_ONNX_OPSET = 17

    def __init__(self, config, task: str = "feature-extraction", max_top_k: int = 100, **kwargs):
        super().__init__(config, task=task, **kwargs)
        self.max_top_k = int(max_top_k)  # K of the graph's TopK (fixed output width)

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return OrderedDict({INPUT_NAME: {0: BATCH_AXIS, 1: SEQUENCE_AXIS}})

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        # the K axis is static (max_top_k); Optimum's fix_dynamic_axes pins it after export
        return OrderedDict({OUTPUT_ITEMS: {0: BATCH_AXIS}, OUTPUT_SCORES: {0: BATCH_AXIS}})

    @property
    def values_override(self):
        return None  # FsRecConfig has no use_cache; nothing to override
