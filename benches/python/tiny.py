#!/usr/bin/env python3
"""PyTorch side of benches/tiny.rs: one training step of the tiny CLIP recipe, timed on 2 threads.

Packages (pinned): torch==2.9.0, open_clip_torch==3.3.0, pytorch-metric-learning==2.9.0.
Usage: ${SIAM_PYTHON:-python3} benches/python/tiny.py P K STEPS
Prints one JSON object: for `padded` (open_clip's encode_text, texts padded to the 77-token
context as open_clip trains) and `trimmed` (the same text tower run on the batch's real length,
as siam does), milliseconds per step (`ms`) and process CPU seconds per wall second (`cpu`);
and `ops_us`, microseconds for one LayerNorm and one QuickGELU forward + backward on the image
tower's activations, and `mlp_linears` for the MLP's two linears (per-op cost, compared with
burn's in benches/tiny.rs).

The step (the same as siam's default `siam train --loss triplet` step):
- open_clip `CLIP` from benches/python/tiny_clip.json (random init, QuickGELU), both towers
  trainable, a 64 -> 64 linear head on each tower;
- a P x K batch of 32 px images (random pixels) and the P label texts "a photo of a {}.";
- TripletMarginLoss (cosine, margin 0.2) on all triplets (no miner: PML's batch-all), image
  anchors against text references and the reverse, averaged;
- loss.backward(), clip_grad_norm_(1.0), AdamW (lr 1e-3, weight decay 0.1 on weights of rank
  >= 2, none on norms, biases and embeddings of rank 1, as open_clip's training script).
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
import torch.nn.functional as F
import open_clip
from open_clip.model import CLIP
from pytorch_metric_learning import distances, losses

torch.set_num_threads(2)
torch.manual_seed(0)
P, K, STEPS = (int(a) for a in sys.argv[1:4])
B = P * K
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, "tiny_clip.json")) as f:
    model = CLIP(**json.load(f))
model.train()
D = model.text_projection.shape[1]
image_head, text_head = torch.nn.Linear(D, D), torch.nn.Linear(D, D)
loss_fn = losses.TripletMarginLoss(margin=0.2, distance=distances.CosineSimilarity())

pixels = torch.randn(B, 3, 32, 32)
labels = torch.arange(B) // K
texts = [f"a photo of a {CLASSES[i % len(CLASSES)]}." for i in range(P)]
text_labels = torch.arange(P)
ids77 = open_clip.tokenize(texts)
length = int((ids77 != 0).sum(dim=1).max())
ids_trimmed = ids77[:, :length].contiguous()


def encode_text_trimmed(ids):
    """open_clip's CLIP.encode_text on L < 77 tokens: positions and causal mask cut to L."""
    n = ids.shape[1]
    x = model.token_embedding(ids) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]
    return x @ model.text_projection


def loss_of(img, txt):
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    a = loss_fn(img, labels, ref_emb=txt, ref_labels=text_labels)
    b = loss_fn(txt, text_labels, ref_emb=img, ref_labels=labels)
    return 0.5 * (a + b)


decay, no_decay = [], []
for n, p in list(model.named_parameters()) + [
    ("image_head." + n, p) for n, p in image_head.named_parameters()
] + [("text_head." + n, p) for n, p in text_head.named_parameters()]:
    if n == "logit_scale":
        continue  # the triplet loss does not use it (siam freezes it then)
    exempt = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n
    (no_decay if exempt else decay).append(p)
params = decay + no_decay
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
    lr=1e-3,
)


def step(encode_text, ids):
    opt.zero_grad()
    loss = loss_of(image_head(model.encode_image(pixels)), text_head(encode_text(ids)))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def timed(encode_text, ids):
    for _ in range(3):
        step(encode_text, ids)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(STEPS):
        step(encode_text, ids)
    wall = time.perf_counter() - t
    return {"ms": 1000 * wall / STEPS, "cpu": (time.process_time() - c) / wall}


def op_chains(reps):
    """Per-op cost: LayerNorm, QuickGELU and the MLP's two linears (128 -> 512 -> 128) forward +
    backward on the image tower's shapes."""
    ln = torch.nn.LayerNorm(128)
    fc, proj = torch.nn.Linear(128, 512), torch.nn.Linear(512, 128)
    x = torch.randn(B * 65, 128, requires_grad=True)
    h = torch.randn(B * 65, 512, requires_grad=True)
    out = {}
    for name, f, t in [("layer_norm", lambda: ln(x).sum(), x),
                       ("quick_gelu", lambda: (h * torch.sigmoid(1.702 * h)).sum(), h),
                       ("mlp_linears", lambda: proj(fc(x)).sum(), x)]:
        for _ in range(5):
            f().backward()
        s = time.perf_counter()
        for _ in range(reps):
            f().backward()
        out[name] = 1e6 * (time.perf_counter() - s) / reps
        t.grad = None
    return out


print(json.dumps({
    "ops_us": op_chains(200),
    "padded": timed(model.encode_text, ids77),
    "trimmed": timed(encode_text_trimmed, ids_trimmed),
    "text_len": length,
}))
