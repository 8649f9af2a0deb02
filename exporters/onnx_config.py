"""The custom Optimum ``OnnxConfig`` of the served FsRec graph.

Optimum cannot export a model class defined outside transformers on its own
(``onnx_export_from_model`` cannot infer the library, ``main_export`` reloads a plain
``BertModel`` and drops the head). What works is a subclass of
Optimum's ``BertOnnxConfig`` that declares the served graph's own inputs and outputs with named
dynamic axes, passed to ``optimum.exporters.onnx.export``. The graph is the
:class:`exporters.export.FsRecTopKModule` wrapper:

- input ``item_ids`` int64 ``[batch_size, sequence_length]``: item indices, newest last,
  left-padded with 0 (or at the history's own length: positions are right-aligned);
- input ``user_params`` float32 ``[batch_size, hidden_size]``: a per-user offset of the user
  state (zeros = the zero-shot answer);
- outputs ``top_items`` int64 ``[batch_size, max_top_k]`` and ``top_scores`` float32
  ``[batch_size, max_top_k]``, best first, the user's own history masked out.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from optimum.exporters.onnx.model_configs import BertOnnxConfig
from optimum.utils import (
    DEFAULT_DUMMY_SHAPES,
    DummyInputGenerator,
    NormalizedTextConfig,
)

from fsrec_serve.contract import (
    BATCH_AXIS,
    DEFAULT_MAX_TOP_K,
    INPUT_ITEM_IDS,
    INPUT_USER_PARAMS,
    ITEM_IDS_DTYPE,
    OUTPUT_TOP_ITEMS,
    OUTPUT_TOP_SCORES,
    PAD_INDEX,
    SCORE_DTYPE,
    SEQUENCE_AXIS,
)


class DummyHistoryInputGenerator(DummyInputGenerator):
    """Generates valid ``item_ids``: left-padded histories of real item indices (1..num_items).

    Random token ids over BERT's vocabulary (Optimum's text generator) would include the [MASK]
    token and ids outside the score table; here every row is a plausible history: a random
    length (at least one item), left-padded with 0. Deterministic for a given ``seed``.
    """

    SUPPORTED_INPUT_NAMES = (INPUT_ITEM_IDS, INPUT_USER_PARAMS)

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
        self.hidden_size = int(cfg.hidden_size)
        self.batch_size = int(batch_size)
        # never longer than the model's position table (positions are right-aligned)
        self.sequence_length = int(min(sequence_length, cfg.max_seq_len))
        self.seed = seed

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        rng = np.random.default_rng(self.seed)
        B, L = self.batch_size, self.sequence_length
        if input_name == INPUT_USER_PARAMS:
            # small offsets, so that the check covers the per-user path (zeros would not)
            ids = (0.1 * rng.standard_normal((B, self.hidden_size))).astype(SCORE_DTYPE)
            return self._as_framework(ids, framework)
        ids = np.full((B, L), PAD_INDEX, dtype=ITEM_IDS_DTYPE)
        for b in range(B):
            n = int(rng.integers(1, L + 1))
            # distinct items per history (a user rarely repeats), so that at most L items are
            # masked and the top-K stays free of masked filler for any num_items >= L + K
            k = min(n, self.num_items)
            ids[b, L - k:] = rng.choice(np.arange(1, self.num_items + 1), size=k, replace=False)
        return self._as_framework(ids, framework)

    @staticmethod
    def _as_framework(arr: np.ndarray, framework: str):
        if framework == "pt":
            import torch

            return torch.from_numpy(arr)
        return arr


class FsRecOnnxConfig(BertOnnxConfig):
    """Optimum export config of the FsRec top-K graph (two inputs, two outputs)."""

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyHistoryInputGenerator,)
    ATOL_FOR_VALIDATION = 1e-4
    DEFAULT_ONNX_OPSET = 17

    def __init__(self, config, task: str = "feature-extraction", max_top_k: int = DEFAULT_MAX_TOP_K, **kwargs):
        super().__init__(config, task=task, **kwargs)
        self.max_top_k = int(max_top_k)  # K of the graph's TopK (fixed output width)

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return OrderedDict({INPUT_ITEM_IDS: {0: BATCH_AXIS, 1: SEQUENCE_AXIS}, INPUT_USER_PARAMS: {0: BATCH_AXIS}})

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        # the K axis is static (max_top_k); Optimum's fix_dynamic_axes pins it after export
        return OrderedDict({OUTPUT_TOP_ITEMS: {0: BATCH_AXIS}, OUTPUT_TOP_SCORES: {0: BATCH_AXIS}})

    @property
    def values_override(self):
        return None  # FsRecConfig has no use_cache; nothing to override
