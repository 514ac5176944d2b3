#!/usr/bin/env python3
"""PyTorch reference for benches/towers.rs: transformers' CLIPModel (ViT-B/32 shapes, random
weights, eager, fp32, CPU, `torch.set_num_threads(threads)`), timing the image tower at one batch
of 224 px images and the text tower at one batch of texts padded to each given length.

Also, with --make-checkpoint DIR: writes a random ViT-B/32 open_clip state dict
(open_clip.create_model('ViT-B-32-quickgelu'), fp32) as DIR/vit_b_32.safetensors and
DIR/vit_b_32.pt, for the peak-memory measurement of the Rust loader.

Prints one JSON object on stdout. Needs (pinned): torch==2.9.0, transformers==4.57.1,
open_clip_torch==3.3.0, safetensors. No network (HF_HUB_OFFLINE=1); nothing is downloaded.
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch


def make_checkpoint(out_dir):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu")
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    st = os.path.join(out_dir, "vit_b_32.safetensors")
    pt = os.path.join(out_dir, "vit_b_32.pt")
    save_file(state, st)
    torch.save(state, pt)
    return {"safetensors": st, "pt": pt, "tensors": len(state)}


def bench(args):
    from transformers import CLIPConfig, CLIPModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # transformers' CLIPConfig defaults are exactly openai/clip-vit-base-patch32.
    model = CLIPModel(CLIPConfig()).eval()
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with torch.inference_mode():
        px = torch.randn(args.image_batch, 3, 224, 224)
        out["image_s"] = timed(lambda: model.get_image_features(pixel_values=px))
        out["text_s"] = {}
        for length in args.lengths:
            ids = torch.randint(1, 49405, (args.text_batch, length))
            ids[:, 0] = 49406
            ids[:, -1] = 49407
            out["text_s"][str(length)] = timed(lambda: model.get_text_features(input_ids=ids))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-batch", type=int, default=32)
    ap.add_argument("--text-batch", type=int, default=256)
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[16, 77])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--make-checkpoint")
    args = ap.parse_args()
    if args.make_checkpoint:
        print(json.dumps(make_checkpoint(args.make_checkpoint)))
    else:
        print(json.dumps(bench(args)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
