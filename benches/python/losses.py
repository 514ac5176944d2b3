"""pytorch-metric-learning side of benches/losses.rs: loss + mining forward and backward.

Requires (pinned): torch==2.9.0, pytorch-metric-learning==2.9.0.
Usage: ${SIAM_PYTHON:-python3} benches/python/losses.py 256,1024,4096 512
Prints one JSON object per line: {"config", "batch", "ms"} or {"config", "batch", "skipped"}.
Embeddings are N(0, 1), labels i // 4 (P·K batches with K = 4), cosine similarity, 2 threads.
"""
import json
import statistics
import sys
import time

import torch
from pytorch_metric_learning import distances, losses, miners

torch.set_num_threads(2)
torch.manual_seed(0)
MAX_BYTES = 6e9  # skip configurations whose B³-style masks would not fit beside the other jobs


def configs():
    cos = distances.CosineSimilarity
    return {
        "triplet + batch-hard": (losses.TripletMarginLoss(margin=0.2, distance=cos()), miners.BatchHardMiner(distance=cos())),
        "triplet + semihard miner": (losses.TripletMarginLoss(margin=0.2, distance=cos()),
                                     miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=cos())),
        "triplet batch-all": (losses.TripletMarginLoss(margin=0.2, distance=cos()), None),
        "pairwise contrastive": (losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.0, distance=cos()), None),
        "NT-Xent": (losses.NTXentLoss(temperature=0.07, distance=cos()), None),
        "multi-similarity + miner": (losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5, distance=cos()),
                                     miners.MultiSimilarityMiner(epsilon=0.1, distance=cos())),
    }


def too_big(name, b):
    pos, neg = b * 3, b * (b - 4)
    if name in ("triplet + semihard miner", "triplet batch-all"):
        # get_all_triplets_indices: a B³ uint8 mask, or (above INT_MAX) 3 int64 per triplet.
        need = b ** 3 if b ** 3 < 2 ** 31 else 3 * 8 * b * 3 * (b - 4) * 2
        return need > MAX_BYTES, f"needs ~{need / 1e9:.0f} GB of triplet masks/indices"
    if name == "NT-Xent":
        need = 4 * pos * neg * 3  # the [positive pairs x negative pairs] float mask and two copies
        return need > MAX_BYTES, f"needs ~{need / 1e9:.0f} GB ([pos pairs x neg pairs] mask)"
    return False, ""


def main():
    sizes = [int(s) for s in sys.argv[1].split(",")]
    dim = int(sys.argv[2])
    for b in sizes:
        labels = torch.arange(b) // 4
        for name, (loss_fn, miner) in configs().items():
            skip, why = too_big(name, b)
            if skip:
                print(json.dumps({"config": name, "batch": b, "skipped": why}), flush=True)
                continue
            reps = 3 if b >= 4096 else 5
            times = []
            for it in range(reps + 1):
                x = torch.randn(b, dim).requires_grad_(True)
                t0 = time.perf_counter()
                tuples = miner(x, labels) if miner is not None else None
                loss = loss_fn(x, labels, tuples)
                loss.backward()
                _ = x.grad.sum().item()
                if it > 0:
                    times.append(time.perf_counter() - t0)
            print(json.dumps({"config": name, "batch": b, "ms": 1e3 * statistics.median(times)}), flush=True)


if __name__ == "__main__":
    main()
