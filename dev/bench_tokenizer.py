#!/usr/bin/env python3
"""tiktoken's side of dev/bench_tokenizer (dev only; pip install tiktoken numpy).

Builds tiktoken's gpt2 Encoding from the local encoder.json/vocab.bpe (no
download) and, per FILE, prints one line:
    FILE bytes tokens checksum mbps_1thread mbps_Nthreads
checksum = sum(ids[i] * (i % 1000003 + 1)) mod 2**64, as in bench_tokenizer.cpp.
MB/s is the median of --repeats runs after one warm-up. The multi-threaded run
uses encode_ordinary_batch over chunks cut at line ends.
"""
import argparse, statistics, time
import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

# GPT-2's pattern as tiktoken writes it
PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=a.vocab + "/vocab.bpe",
                                            encoder_json_file=a.vocab + "/encoder.json")
    enc = tiktoken.Encoding(name="gpt2_local", pat_str=PAT, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    for path in a.files:
        raw = open(path, "rb").read()
        text = raw.decode("utf-8")
        mb = len(raw) / 1e6

        def timed(f):
            f()  # warm-up
            ts = []
            for _ in range(a.repeats):
                t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
            return mb / statistics.median(ts)

        ids = np.array(enc.encode_ordinary(text), dtype=np.uint64)
        weights = (np.arange(len(ids), dtype=np.uint64) % np.uint64(1000003)) + np.uint64(1)
        checksum = int((ids * weights).sum(dtype=np.uint64))
        single = timed(lambda: enc.encode_ordinary(text))
        step = max(1, len(text) // (a.threads * 16))
        chunks, pos = [], 0
        while pos < len(text):
            end = text.find("\n", pos + step)
            end = len(text) if end < 0 else end + 1
            chunks.append(text[pos:end]); pos = end
        multi = timed(lambda: enc.encode_ordinary_batch(chunks, num_threads=a.threads))
        print(path, len(raw), len(ids), checksum, "%.2f" % single, "%.2f" % multi, flush=True)


if __name__ == "__main__":
    main()
