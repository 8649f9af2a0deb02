"""The alternative a user would write: a FastAPI + PyTorch server that runs the model per request.

    python -m bench.fastapi_server --model runs/ml-100k --port 8090 [--device cuda]

``POST /recommend`` with ``{"item_ids": [...], "k": 10}`` (item indices, newest last, the same
input Triton gets) returns ``{"items": [...], "scores": [...]}``: the history, at its own
length (no padding), runs through PyTorch under ``torch.inference_mode`` one request per forward
pass (no batching across requests), the user's own items are masked and the top k returned: the
same graph as the served ONNX one (:class:`exporters.export.FsRecTopKModule`, last position
only). The endpoint is a plain ``def``, so FastAPI runs it in its thread pool, as the FastAPI
docs recommend for blocking code. ``GET /health`` answers once the model is loaded. Binds
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import BaseModel, Field

LOOPBACK = ("127.0.0.1", "localhost")


class RecommendRequest(BaseModel):
    item_ids: list[int] = Field(..., description="history as item indices, newest last")
    k: int = Field(10, description="number of recommendations")


class RecommendResponse(BaseModel):
    items: list[int]  # item indices, best first
    scores: list[float]  # their scores


def create_app(model_dir: str, device: str = "cpu", max_top_k: int = 100, num_threads: int | None = None):
    import torch
    from fastapi import FastAPI, HTTPException

    from exporters.export import FsRecTopKModule
    from fsrec_serve.model import FsRecModel

    if num_threads:
        torch.set_num_threads(num_threads)
    dev = torch.device(device)
    model = FsRecModel.from_pretrained(model_dir).to(dev).eval()
    k_max = min(max_top_k, int(model.config.num_items))
    topk = FsRecTopKModule(model, k_max, last_position_only=True).eval()
    max_len = int(model.config.max_seq_len)
    n_items = int(model.config.num_items)

    # warm-up, as Triton's model_warmup: one forward per history length, so that the shape-specific
    # kernels are ready before the first timed request (histories arrive at their own length)
    with torch.inference_mode():
        for n in range(1, max_len + 1):
            topk(torch.ones(1, n, dtype=torch.long, device=dev))

    app = FastAPI(title="fsrec FastAPI + PyTorch baseline")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "device": str(dev), "max_seq_len": max_len}

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(req: RecommendRequest) -> RecommendResponse:
        if not req.item_ids:
            raise HTTPException(400, "item_ids is empty")
        if not 1 <= req.k <= k_max:
            raise HTTPException(400, f"k must be in 1..{k_max}")
        if min(req.item_ids) < 1 or max(req.item_ids) > n_items:
            raise HTTPException(400, f"item ids must be in 1..{n_items}")
        x = torch.as_tensor([req.item_ids[-max_len:]], dtype=torch.long, device=dev)  # [1, L]: its own length
        with torch.inference_mode():
            out = topk(x)
        items = out["top_items"][0, : req.k].tolist()
        scores = out["top_scores"][0, : req.k].tolist()
        keep = [i for i, it in enumerate(items) if it > 0]
        return RecommendResponse(items=[items[i] for i in keep], scores=[scores[i] for i in keep])

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="FastAPI + PyTorch baseline server (per-request inference)")
    ap.add_argument("--model", required=True, help="checkpoint folder (FsRecModel.save_pretrained)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address: 127.0.0.1 or localhost only")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.host not in LOOPBACK:
        print(f"refusing to bind {args.host}: the benchmark server binds 127.0.0.1 only", file=sys.stderr)
        return 2
    import uvicorn

    app = create_app(args.model, args.device, num_threads=args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
