#!/usr/bin/env python3
"""PyTorch side of benches/train.rs: the same three training steps, timed on 2 threads.

Packages (pinned): torch==2.9.0, open_clip_torch==3.3.0, pytorch-metric-learning==2.9.0.
Usage: ${SIAM_PYTHON:-python3} benches/python/train.py BATCH TEXT_LEN STEPS HEAD_STEPS
Prints one JSON object: milliseconds per step for `full`, `locked`, `heads_cached`.

- full: ViT-B-32 towers (random init, open_clip's architecture, no download) + linear heads,
  both towers trainable; triplet margin loss (cosine, margin 0.2) on BatchHardMiner triplets in
  both directions; AdamW; clip_grad_norm_.
- locked: the same with both towers frozen (forward without grad, heads train).
- heads_cached: heads only on precomputed tower features (what the feature cache serves).
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
import torch.nn.functional as F
import open_clip
from pytorch_metric_learning import distances, losses, miners

torch.set_num_threads(2)
torch.manual_seed(0)
B, L, STEPS, HEAD_STEPS = (int(a) for a in sys.argv[1:5])
P = B // 4

model = open_clip.create_model("ViT-B-32", pretrained=None)
model.train()
D = 512
image_head, text_head = torch.nn.Linear(D, D), torch.nn.Linear(D, D)
dist = distances.CosineSimilarity()
miner = miners.BatchHardMiner(distance=dist)
loss_fn = losses.TripletMarginLoss(margin=0.2, distance=dist)

pixels = torch.randn(B, 3, 224, 224)
labels = torch.arange(B) // 4
ids = torch.zeros(P, 77, dtype=torch.long)
ids[:, 1 : L - 1] = torch.randint(1, 49000, (P, L - 2))
ids[:, 0], ids[:, L - 1] = 49406, 49407
text_labels = torch.arange(P)


def loss_of(img, txt):
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    a = loss_fn(img, labels, miner(img, labels, txt, text_labels), txt, text_labels)
    b = loss_fn(txt, text_labels, miner(txt, text_labels, img, labels), img, labels)
    return 0.5 * (a + b)


def timed(step, n):
    step()
    t = time.perf_counter()
    for _ in range(n):
        step()
    return 1000 * (time.perf_counter() - t) / n


params = list(model.parameters()) + list(image_head.parameters()) + list(text_head.parameters())
opt = torch.optim.AdamW(params, lr=1e-5)


def full():
    opt.zero_grad()
    loss = loss_of(image_head(model.encode_image(pixels)), text_head(model.encode_text(ids)))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


head_params = list(image_head.parameters()) + list(text_head.parameters())
head_opt = torch.optim.AdamW(head_params, lr=1e-3)


def locked():
    head_opt.zero_grad()
    with torch.no_grad():
        fi, ft = model.encode_image(pixels), model.encode_text(ids)
    loss = loss_of(image_head(fi), text_head(ft))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(head_params, 1.0)
    head_opt.step()


with torch.no_grad():
    cached_i, cached_t = model.encode_image(pixels), model.encode_text(ids)


def heads_cached():
    head_opt.zero_grad()
    loss = loss_of(image_head(cached_i), text_head(cached_t))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(head_params, 1.0)
    head_opt.step()


print(json.dumps({
    "full": timed(full, STEPS),
    "locked": timed(locked, STEPS),
    "heads_cached": timed(heads_cached, HEAD_STEPS),
}))
