"""Two-process DDP pretraining (torchrun, gloo on CPU) follows the single-process loss curve.

The same tiny model, data and seed are trained twice: once with the plain ``train_loop`` in this
process, once with ``fsrec_serve.training.ddp`` under ``torchrun --nproc-per-node=2``. Dropout is
off, so the only differences left are float rounding (each rank computes half of every batch):
the per-epoch losses, the validation NDCG and the final weights must agree closely.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]

# shared by the in-process baseline and the torchrun workers (exec'd in both)
SETUP = textwrap.dedent(
    """
    import random
    import torch
    from fsrec_serve.data.splits import Example, UserSequence
    from fsrec_serve.model import FsRecConfig, FsRecModel
    from fsrec_serve.training import TrainConfig

    def make_setup():
        rnd = random.Random(7)
        seqs = []
        for u in range(48):
            n = rnd.randint(4, 14)
            seqs.append(UserSequence(f"u{u}", [rnd.randint(1, 30) for _ in range(n)], [1.0] * n))
        valid = [Example(s.user, s.items[:-1], s.items[-1]) for s in seqs[:16]]
        cfg = FsRecConfig(num_items=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                          intermediate_size=32, max_seq_len=10, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, objective="causal", rating_head=False)
        # batch 20 over 48 windows: batches of 20, 20, 8 (uneven last batch included)
        tc = TrainConfig(epochs=4, batch_size=20, lr=5e-3, warmup_ratio=0.0, patience=0, seed=0,
                         device="cpu", num_threads=1, window="tail", progress=False,
                         use_ratings=False)
        torch.manual_seed(0)
        model = FsRecModel(cfg)
        return model, seqs, valid, tc
    """
)

WORKER = SETUP + textwrap.dedent(
    """
    import json, sys
    from fsrec_serve.training.ddp import ddp_train_loop, init_distributed, shutdown_distributed

    ctx = init_distributed("gloo")
    model, seqs, valid, tc = make_setup()
    from fsrec_serve.evaluation import evaluate_next_item
    res = ddp_train_loop(model, seqs, tc, ctx, valid_examples=valid, evaluate_fn=evaluate_next_item)
    if ctx.is_main:
        out = {"world_size": ctx.world_size,
               "global_loss": [r["global_loss"] for r in res.history],
               "ndcg": [r["valid_ndcg@10"] for r in res.history],
               "weights": {k: v.tolist() for k, v in res.model.state_dict().items()
                           if k.startswith("encoder.layer.0.attention.self.query")}}
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
    shutdown_distributed()
    """
)


def _baseline():
    ns: dict = {}
    exec(SETUP, ns)  # noqa: S102 - our own constant code
    model, seqs, valid, tc = ns["make_setup"]()
    from fsrec_serve.evaluation import evaluate_next_item
    from fsrec_serve.training import train_loop

    res = train_loop(model, seqs, tc, valid_examples=valid, evaluate_fn=evaluate_next_item)
    return res


@pytest.mark.timeout(240)
def test_two_process_ddp_matches_single_process_loss_curve(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(WORKER)
    out = tmp_path / "ddp.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(script), str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2

    base = _baseline()
    base_loss = [r["loss"] for r in base.history]
    base_ndcg = [r["valid_ndcg@10"] for r in base.history]
    assert len(ddp["global_loss"]) == len(base_loss) == 4
    # the loss really moves (otherwise "equal curves" would prove nothing)
    assert base_loss[-1] < base_loss[0] - 0.05, base_loss
    assert ddp["global_loss"] == pytest.approx(base_loss, rel=1e-4, abs=1e-5), (ddp["global_loss"], base_loss)
    assert ddp["ndcg"] == pytest.approx(base_ndcg, abs=1e-3), (ddp["ndcg"], base_ndcg)
    # the final weights agree too (both the DDP model and the baseline are the restored best state)
    sd = base.model.state_dict()
    for k, v in ddp["weights"].items():
        assert torch.allclose(torch.tensor(v), sd[k], atol=2e-3), k


def test_backend_resolution_and_time_budget_refused():
    from fsrec_serve.errors import ConfigError
    from fsrec_serve.training.ddp import DistContext, ddp_train_loop, resolve_backend
    from fsrec_serve.training import TrainConfig

    assert resolve_backend("gloo") == "gloo"
    if not torch.cuda.is_available():
        assert resolve_backend("auto") == "gloo"
        with pytest.raises(ConfigError, match="nccl"):
            resolve_backend("nccl")
    with pytest.raises(ConfigError, match="backend"):
        resolve_backend("mpi-please")
    ctx = DistContext(rank=0, world_size=2, local_rank=0, backend="gloo", device="cpu")
    with pytest.raises(ConfigError, match="max_train_seconds"):
        ddp_train_loop(None, [], TrainConfig(max_train_seconds=5.0, progress=False), ctx)
