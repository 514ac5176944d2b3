#!/usr/bin/env python3
"""Builds data/assets/clip_tokenizer.json, CLIP's BPE tokenizer in Hugging Face `tokenizers` format.

Source: OpenAI's MIT-licensed `bpe_simple_vocab_16e6.txt.gz`, shipped in the PyPI wheel
clip-anytorch==2.6.0 (`clip/`). The vocabulary is rebuilt exactly as OpenAI's
`clip/simple_tokenizer.py` does (256 byte characters, the same with `</w>`, then the merges
`[1:49152-256-2+1]` joined, then `<|startoftext|>` and `<|endoftext|>`: 49,408 entries), and handed
to transformers' `CLIPTokenizer` -> `CLIPTokenizerFast` converter, which produces the same
tokenizer.json as the one published with `openai/clip-vit-base-patch32` (NFC + whitespace collapse +
lowercase normaliser, CLIP's pre-tokenizer regex, byte-level BPE with `</w>` suffix, and a
post-processor adding 49406 ... 49407). Nothing is downloaded.

Packages (pinned): transformers==4.57.1, tokenizers==0.22.2, clip-anytorch==2.6.0.
Run: ${SIAM_PYTHON:-python3} scripts/make_tokenizer.py   (from the repository root)
"""
import gzip
import json
import os
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"

import clip  # clip-anytorch: only used to locate its bundled BPE file
from clip.simple_tokenizer import bytes_to_unicode
from transformers import CLIPTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "assets", "clip_tokenizer.json")
CONTEXT_LENGTH = 77  # CLIP's text context (model config `max_position_embeddings`)


def main() -> None:
    bpe_path = os.path.join(os.path.dirname(clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        merges_file = os.path.join(tmp, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for a, b in merges:
                f.write(f"{a} {b}\n")
        # Special tokens as in openai/clip-vit-base-patch32's tokenizer_config.json.
        tok = CLIPTokenizerFast(
            vocab_file=vocab_file,
            merges_file=merges_file,
            unk_token="<|endoftext|>",
            bos_token="<|startoftext|>",
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            model_max_length=CONTEXT_LENGTH,
            from_slow=True,
        )
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
            data = json.load(f)

    # Truncation/padding are applied by siam at call time (ClipTokenizer::encode*), not stored.
    data["truncation"] = None
    data["padding"] = None
    ids = tok("a photo of a cat")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(vocab)} tokens)", file=sys.stderr)


if __name__ == "__main__":
    main()
