#!/usr/bin/env python3
"""PyTorch reference of the learning-quality bench (benches/learning/run.sh).

Packages (pinned): torch==2.9.0, open_clip_torch==3.3.0, pytorch-metric-learning==2.9.0, numpy.

Trains a tiny CLIP from random weights on a CIFAR-10 binary folder (`data_batch_N.bin` for
training, `test_batch.bin` held out) and reports what `siam eval` reports on the held-out photos:
zero-shot top-1 with the label texts "a photo of a {}.", recall@1 both ways (a label text's
positives are the images of its class), wall time and training images/s.

What it mirrors of `siam train` (src/train/): the model is open_clip's `CLIP` built from the
bench's config (vision 32 px, patch 4, width 128, 4 layers, head width 32; text width 128,
4 heads, 2 layers, context 77; embed 64; QuickGELU) plus one linear head per tower, square and
identity-initialised as siam's `--head linear`; embeddings are L2-normalised; a batch is P x K
class-balanced (`--batch pk:PxK`) or shuffled (`--batch random:N`), and its text references
are the batch's distinct label texts; the loss is the mean of both directions
`0.5 * (L(img -> txt) + L(txt -> img))` with pytorch-metric-learning 2.9's losses and miners
(cosine similarity), or, for the contrastive (label-aware InfoNCE, SupCon's multi-positive
form, symmetric, learnable logit scale from 1/0.07) and sigmoid (SigLIP, learnable t' from
ln 10 and bias from -10, label-aware) losses, their formulas written out as open_clip's
ClipLoss / SigLipLoss; AdamW (betas 0.9/0.999, eps 1e-8) with open_clip's weight-decay
exemptions, open_clip's warm-up + cosine schedule per step, clip_grad_norm_(1.0); the logit
scale clamped at ln 100.

Miners (`--miner`): all (every tuple: PML's loss without a miner), semihard
(TripletMarginMiner(margin, "semihard")), hard (BatchHardMiner), multi-similarity
(MultiSimilarityMiner(0.1)), none (contrastive and sigmoid).

Usage: python reference.py --data DIR --loss triplet --miner all --batch pk:6x4 --epochs 8
       [--lr 1e-3 --wd 0.1 --warmup 10 --margin 0.2 --threads 2 --seed 0 --json out.json]
Prints one JSON object (also written to --json).
"""
import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
import open_clip
from open_clip.model import CLIP
from pytorch_metric_learning import distances, losses, miners

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
VISION = dict(image_size=32, patch_size=4, width=128, layers=4, head_width=32, mlp_ratio=4.0)
TEXT = dict(context_length=77, vocab_size=49408, width=128, heads=4, layers=2)
EMBED = 64
LN100 = math.log(100.0)


def read_cifar(path):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    labels = raw[:, 0].astype(np.int64)
    pixels = raw[:, 1:].reshape(-1, 3, 32, 32)
    return torch.from_numpy(pixels.copy()), torch.from_numpy(labels)


def normalise(u8):
    return (u8.float() / 255.0 - MEAN) / STD


def pk_batches(labels, p, k, rng):
    """One epoch of P x K batches: each class's items shuffled and cut into chunks of K (the
    last one topped up from the same class), then P classes per batch, most chunks left first
    (random order among equals), as siam_data's ClassBalancedSampler covers an epoch."""
    chunks = {}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cs = [idx[i:i + k] for i in range(0, len(idx), k)]
        if len(cs[-1]) < k:
            rest = np.setdiff1d(np.flatnonzero(labels == c), cs[-1])
            cs[-1] = np.concatenate([cs[-1], rng.choice(rest, k - len(cs[-1]), replace=False)])
        chunks[int(c)] = cs
    batches = []
    while True:
        live = [c for c, cs in chunks.items() if cs]
        if len(live) < p:
            break
        order = sorted(live, key=lambda c: (-len(chunks[c]), rng.random()))
        batches.append(np.concatenate([chunks[c].pop() for c in order[:p]]))
    rng.shuffle(batches)
    return batches


def random_batches(n, size, rng):
    perm = rng.permutation(n)
    return [perm[i:i + size] for i in range(0, n - size + 1, size)]


class Twin(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        kw = {}
        if loss == "sigmoid":
            kw = dict(init_logit_scale=math.log(10.0), init_logit_bias=-10.0)
        self.clip = CLIP(embed_dim=EMBED, vision_cfg=VISION, text_cfg=TEXT, quick_gelu=True, **kw)
        self.image_head = torch.nn.Linear(EMBED, EMBED)
        self.text_head = torch.nn.Linear(EMBED, EMBED)
        for h in (self.image_head, self.text_head):
            torch.nn.init.eye_(h.weight)
            torch.nn.init.zeros_(h.bias)

    def images(self, u8):
        return F.normalize(self.image_head(self.clip.encode_image(normalise(u8))), dim=-1)

    def texts(self, ids):
        return F.normalize(self.text_head(self.clip.encode_text(ids)), dim=-1)


def supcon_rows(logits, pos):
    """Multi-positive InfoNCE per row: -(1/|P(i)|) sum_p log softmax(z_i)[p], rows with a
    positive and a negative only (siam_losses' ContrastiveLoss, Positives::MultiPositive)."""
    logp = logits.log_softmax(dim=1)
    n_pos = pos.sum(1)
    ok = (n_pos > 0) & (n_pos < pos.shape[1])
    per = -(logp * pos).sum(1) / n_pos.clamp(min=1)
    return per[ok].mean() if ok.any() else logits.sum() * 0


def build_loss(args):
    cos = distances.CosineSimilarity()
    if args.loss == "triplet":
        fn = losses.TripletMarginLoss(margin=args.margin, distance=cos)
    elif args.loss == "pairwise":
        fn = losses.ContrastiveLoss(pos_margin=args.pos_margin, neg_margin=args.neg_margin, distance=cos)
    elif args.loss == "multi-similarity":
        fn = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5, distance=cos)
    else:
        fn = None
    miner = {
        "all": None,
        "none": None,
        "semihard": miners.TripletMarginMiner(margin=args.margin, type_of_triplets="semihard", distance=cos),
        "hard": miners.BatchHardMiner(distance=cos),
        "multi-similarity": miners.MultiSimilarityMiner(epsilon=0.1, distance=cos),
    }[args.miner]
    return fn, miner


def batch_loss(args, model, fn, miner, img, il, txt, tl):
    if args.loss == "contrastive":
        z = model.clip.logit_scale.exp() * img @ txt.T
        pos = (il[:, None] == tl[None, :]).float()
        return 0.5 * (supcon_rows(z, pos) + supcon_rows(z.T, pos.T))
    if args.loss == "sigmoid":
        z = model.clip.logit_scale.exp() * img @ txt.T + model.clip.logit_bias
        sign = 2.0 * (il[:, None] == tl[None, :]).float() - 1.0
        return -F.logsigmoid(sign * z).sum() / img.shape[0]

    def one(a, al, r, rl):
        tuples = miner(a, al, r, rl) if miner is not None else None
        return fn(a, al, tuples, r, rl)

    return 0.5 * (one(img, il, txt, tl) + one(txt, tl, img, il))


def lr_at(step, base, warmup, total):
    """open_clip's cosine_lr (src/open_clip_train/scheduler.py), as siam's CosineSchedule."""
    if step < warmup:
        return base * (step + 1) / warmup
    e, span = step - warmup, total - warmup
    return 0.5 * (1 + math.cos(math.pi * e / span)) * base if span > 0 else base


def optimiser(model, args):
    exempt = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not exempt(n, p)], "weight_decay": args.wd},
        {"params": [p for n, p in named if exempt(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)


@torch.no_grad()
def evaluate(model, pixels, labels, prompts):
    model.eval()
    txt = model.texts(prompts)
    img = torch.cat([model.images(pixels[i:i + 500]) for i in range(0, len(pixels), 500)])
    model.train()
    sims = img @ txt.T
    top1 = (sims.argmax(1) == labels).float().mean().item()
    t2i = (labels[sims.argmax(0)] == torch.arange(len(prompts))).float().mean().item()
    return {"zero_shot_top1": top1, "i2t_r1": top1, "t2i_r1": t2i}


def embedding_spread(model, pixels):
    """1 - mean pairwise cosine of unit image embeddings (0: collapsed to one point)."""
    with torch.no_grad():
        model.eval()
        e = model.images(pixels[:500])
        model.train()
    m = e.mean(0)
    n = e.shape[0]
    return float(1.0 - (n * n * (m @ m) - n) / (n * (n - 1)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--loss", default="triplet",
                    choices=["triplet", "pairwise", "contrastive", "multi-similarity", "sigmoid"])
    ap.add_argument("--miner", default=None)
    ap.add_argument("--batch", default="pk:6x4", help="pk:PxK or random:N")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--pos-margin", type=float, default=0.8)
    ap.add_argument("--neg-margin", type=float, default=0.3)
    ap.add_argument("--clip-grad", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=0, help="first N training photos (smoke tests)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.miner is None:
        args.miner = {"triplet": "all", "pairwise": "all", "multi-similarity": "multi-similarity"}.get(args.loss, "none")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    data = Path(args.data)
    train_x, train_y = read_cifar(data / "data_batch_1.bin")
    test_x, test_y = read_cifar(data / "test_batch.bin")
    if args.train_limit:
        train_x, train_y = train_x[:args.train_limit], train_y[:args.train_limit]
    names = (data / "batches.meta.txt").read_text().split()
    tok = open_clip.get_tokenizer("ViT-B-32")
    prompts = tok([f"a photo of a {n.replace('_', ' ')}." for n in names])

    model = Twin(args.loss)
    model.train()
    fn, miner = build_loss(args)
    opt = optimiser(model, args)
    kind, spec = args.batch.split(":")
    if kind == "pk":
        p, k = (int(v) for v in spec.split("x"))
        epoch_batches = lambda: pk_batches(train_y.numpy(), p, k, rng)
    else:
        epoch_batches = lambda: random_batches(len(train_y), int(spec), rng)
    steps_per_epoch = len(epoch_batches())
    total = steps_per_epoch * args.epochs
    warmup = min(args.warmup, max(total - 1, 0))
    params = [p for p in model.parameters() if p.requires_grad]
    step, images, train_s, history = 0, 0, 0.0, []
    for epoch in range(args.epochs):
        te = time.perf_counter()
        losses_seen = []
        for idx in epoch_batches():
            idx = torch.from_numpy(np.asarray(idx))
            il = train_y[idx]
            tl = torch.unique(il)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args.lr, warmup, total)
            img = model.images(train_x[idx])
            txt = model.texts(prompts[tl])
            loss = batch_loss(args, model, fn, miner, img, il, txt, tl)
            opt.zero_grad()
            loss.backward()
            if args.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
            opt.step()
            with torch.no_grad():
                model.clip.logit_scale.clamp_(0, LN100)
            step += 1
            images += len(idx)
            losses_seen.append(loss.item())
        train_s += time.perf_counter() - te
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses_seen)),
               "spread": embedding_spread(model, test_x)}
        history.append(row)
        print(json.dumps(row), flush=True)
    result = evaluate(model, test_x, test_y, prompts)
    wall = time.perf_counter() - t0
    result.update({
        "side": "pytorch", "loss": args.loss, "miner": args.miner, "batch": args.batch,
        "epochs": args.epochs, "lr": args.lr, "wd": args.wd, "warmup": warmup,
        "margin": args.margin, "steps": step, "wall_s": wall, "train_s": train_s,
        "images_per_s": images / train_s, "threads": args.threads, "history": history,
    })
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
