"""Reference side of benches/preprocess.rs: PIL + torchvision CLIP preprocessing through a
PyTorch DataLoader, on the JPEG files of a folder.

Requires (the versions measured): torch==2.9.0 torchvision==0.24.0 pillow==13.0.0.
Run by the Rust bench as `${SIAM_PYTHON:-python3} benches/python/preprocess.py DIR --size 224
--batch 32 --workers 2 --repeats 3`; prints one JSON line {"images_per_s": ..., ...}.
"""

import argparse
import glob
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402

# OpenAI CLIP clip/clip.py _transform.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class Files(Dataset):
    def __init__(self, files, size):
        self.files = files
        self.tf = T.Compose(
            [
                T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(size),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            return self.tf(im.convert("RGB"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.dir, "**", "*.jpg"), recursive=True))
    if not files:
        raise SystemExit(f"no .jpg under {a.dir}")
    loader = DataLoader(
        Files(files, a.size),
        batch_size=a.batch,
        num_workers=a.workers,
        shuffle=False,
        persistent_workers=a.workers > 0,
    )
    # First pass warms the page cache and starts the workers; it is not timed.
    n = sum(b.shape[0] for b in loader)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        m = sum(b.shape[0] for b in loader)
        times.append(time.perf_counter() - t0)
        assert m == n
    best = min(times)
    print(
        json.dumps(
            {
                "images": n,
                "best_s": best,
                "images_per_s": n / best,
                "torch": torch.__version__,
                "pillow": Image.__version__,
                "workers": a.workers,
            }
        )
    )


if __name__ == "__main__":
    main()
