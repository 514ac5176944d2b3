#!/usr/bin/env python3
"""Results of the learning-quality bench (run.sh): one JSON per row, and the markdown table.

Packages: none beyond the standard library.

  table.py --siam NAME TRAIN_REPORT EVAL_JSON WALL_S FLAGS   one siam row's JSON, on stdout
  table.py --table RESULTS_DIR                              the markdown table of every row
"""
import json
import sys
from pathlib import Path


def siam_row(name, train_path, eval_path, wall, flags):
    train = json.loads(Path(train_path).read_text())
    ev = json.loads(Path(eval_path).read_text())
    last = next((h for h in reversed(train.get("history", [])) if h.get("epoch")), {})
    return {
        "side": "siam", "name": name, "flags": flags,
        "zero_shot_top1": ev["zero_shot"]["top1"],
        "i2t_r1": ev["retrieval"]["image_to_text"]["recall_at_1"],
        "t2i_r1": ev["retrieval"]["text_to_image"]["recall_at_1"],
        "epochs": train["epochs"], "steps": train["steps"],
        "wall_s": float(wall), "train_s": train["train_seconds"],
        "images_per_s": train["images_per_second"],
        "last_epoch": last,
    }


def describe(r):
    if r["side"] == "siam":
        return f"siam `{r['flags']}`"
    extra = f", wd {r['wd']}" if r.get("wd") != 0.1 else ""
    return f"PyTorch {r['loss']}, miner {r['miner']}, {r['batch']}, lr {r['lr']}{extra}"


def table(results):
    rows = [json.loads(p.read_text()) | {"name": p.stem} for p in sorted(Path(results).glob("*.json"))]
    out = ["| row | recipe | epochs | zero-shot top-1 | i2t R@1 | t2i R@1 | wall s | train images/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {describe(r)} | {r['epochs']} | {r['zero_shot_top1']:.3f} | "
                   f"{r['i2t_r1']:.3f} | {r['t2i_r1']:.2f} | {r['wall_s']:.0f} | {r['images_per_s']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "--siam":
        print(json.dumps(siam_row(*sys.argv[2:7]), indent=1))
    elif sys.argv[1] == "--table":
        print(table(sys.argv[2]))
    else:
        sys.exit("usage: table.py --siam NAME TRAIN EVAL WALL FLAGS | --table DIR")
