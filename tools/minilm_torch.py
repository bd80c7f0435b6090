"""sentence-transformers' own PyTorch run of the `minilm` benchmark batch.

The reference for issue 11's speed target: the same deterministic 8 × 128
batch as `cranelora bench --workload minilm` (src/bench/minilm.rs: the same
LCG ids, row i has 128 − 8·i real tokens), run through the
SentenceTransformer pipeline (BERT encoder, mean pooling, Normalize) under
`torch.inference_mode()` with torch's default intra-op threads (the
machine's cores). Tokenization is excluded on both sides.

    python tools/minilm_torch.py MODEL_DIR [--seconds 5]

needs torch and sentence-transformers (e.g. the anchors' environment made
with INSTALL_TORCH=1 plus `pip install sentence-transformers`). Prints the
median and minimum time per batch and sentences per second.
"""
import argparse
import statistics
import time

import torch
from sentence_transformers import SentenceTransformer

BATCH, SEQ = 8, 128


def batch(vocab):
    """The benchmark's ids and mask, as src/bench/minilm.rs makes them."""
    state = 0x2545F491
    ids, mask = [], []
    for row in range(BATCH):
        real = SEQ - 8 * row
        r_ids, r_mask = [], []
        for t in range(SEQ):
            state = (state * 6364136223846793005 + 1) % (1 << 64)
            word = 1000 + (state >> 33) % max(vocab - 1000, 1)
            if t == 0:
                i = 101
            elif t + 1 == real:
                i = 102
            elif t < real:
                i = word
            else:
                i = 0
            r_ids.append(i)
            r_mask.append(int(t < real))
        ids.append(r_ids)
        mask.append(r_mask)
    return torch.tensor(ids), torch.tensor(mask)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    model = SentenceTransformer(args.model, device="cpu").eval()
    ids, mask = batch(model[0].auto_model.config.vocab_size)
    features = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
    }
    times = []
    with torch.inference_mode():
        for _ in range(3):
            emb = model(dict(features))["sentence_embedding"]
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end or len(times) < 10:
            t0 = time.perf_counter()
            emb = model(dict(features))["sentence_embedding"]
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{len(times)} runs")
    print(f"sentence-transformers: median {med * 1e3:.2f} ms, "
          f"min {min(times) * 1e3:.2f} ms per {BATCH}x{SEQ} batch, "
          f"{BATCH / med:.1f} sentences/s")
    print("embedding[0][:4] =", [round(float(v), 6) for v in emb[0][:4]])


if __name__ == "__main__":
    main()
