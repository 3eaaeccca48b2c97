#!/usr/bin/env python3
"""Writes a randomly initialised Hugging Face Llama of the shape the CPU inference benchmark uses (issue: batch-1
decode against llama2.c's run.c): dim 768, 12 layers, 12 heads, SwiGLU hidden 2048, vocab 32000, untied head, fp32,
134M parameters. Anyone can rebuild the same model:  python3 dev/make_bench_llama.py OUT_DIR [--seed 0]
Then:  ./infer_gpt_cpu --model OUT_DIR ...   and, for run.c, llama2.c's `export.py model.bin --version 0 --hf OUT_DIR`."""
import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("out")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--max-seq-len", type=int, default=1024)
a = p.parse_args()
torch.manual_seed(a.seed)
config = LlamaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                     intermediate_size=2048, vocab_size=32000, max_position_embeddings=a.max_seq_len,
                     rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="float32")
model = LlamaForCausalLM(config).to(torch.float32)
model.save_pretrained(a.out, safe_serialization=True)
print(f"{a.out}: {sum(t.numel() for t in model.parameters()) / 1e6:.1f} M parameters")
