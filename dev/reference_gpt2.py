#!/usr/bin/env python3
"""Writes test/fixtures/gpt2_tiny.bin: a small random-init GPT-2 from Hugging Face `transformers`,
one batch, and everything PyTorch computes on it, in gpt.cu's parameter layout (gpt.cuh: param_sizes).

A dev tool (needs torch + transformers); the build and the tests only read the fixture it wrote.

Fixture layout (little-endian):
  "GPTCUFIX" | uint32 version=1 | uint32 n | n bytes of JSON {model, B, T, num_parameters, steps, lr, beta1,
  beta2, eps, weight_decay, grad_clip}
  float32 params[P] | int32 inputs[B*T] | int32 targets[B*T] (-1 = ignored) | float32 logits[B*T*V]
  float32 loss | float32 grads[P] | float32 losses[steps]  (the loss before each of `steps` AdamW steps)
"""
import sys
import torch
from fixture_util import reference_run, write_fixture
from transformers import GPT2Config, GPT2LMHeadModel

def main(out="test/fixtures/gpt2_tiny.bin"):
    torch.manual_seed(42)
    V, Vp, maxT, L, NH, C, B, T = 61, 64, 16, 2, 2, 64, 2, 8  # hs = 32: a head size the fused kernel compiles
    cfg = GPT2Config(vocab_size=V, n_positions=maxT, n_embd=C, n_layer=L, n_head=NH, n_inner=4 * C,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg).float()
    model.config._attn_implementation = "eager"
    with torch.no_grad():  # non-trivial norms and biases, so their gradients are tested too
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    tr = model.transformer

    def layout(get):  # our tensor order; `get` maps a HF parameter to the tensor to store (param or grad)
        pad = lambda w: torch.cat([w, torch.zeros(Vp - V, C)], 0)
        stack = lambda f: torch.stack([f(h) for h in tr.h])
        parts = [
            pad(get(tr.wte.weight)), get(tr.wpe.weight),
            stack(lambda h: get(h.ln_1.weight)), stack(lambda h: get(h.ln_1.bias)),
            stack(lambda h: get(h.attn.c_attn.weight).t()), stack(lambda h: get(h.attn.c_attn.bias)),   # Conv1D: (in, out) -> (out, in)
            stack(lambda h: get(h.attn.c_proj.weight).t()), stack(lambda h: get(h.attn.c_proj.bias)),
            stack(lambda h: get(h.ln_2.weight)), stack(lambda h: get(h.ln_2.bias)),
            stack(lambda h: get(h.mlp.c_fc.weight).t()), stack(lambda h: get(h.mlp.c_fc.bias)),
            stack(lambda h: get(h.mlp.c_proj.weight).t()), stack(lambda h: get(h.mlp.c_proj.bias)),
            get(tr.ln_f.weight), get(tr.ln_f.bias),
        ]
        return torch.cat([p.detach().reshape(-1).float() for p in parts])

    params = layout(lambda p: p)
    inputs = torch.randint(0, V, (B, T))
    targets = torch.randint(0, V, (B, T))
    targets[1, 3] = -1  # one ignored position: the mean is over the 15 others

    logits, loss, grads, losses = reference_run(model, inputs, targets, V, layout)

    write_fixture(out, {"model": {"arch": "gpt2", "max_seq_len": maxT, "vocab_size": V, "padded_vocab_size": Vp,
                                   "n_layer": L, "n_head": NH, "n_kv_head": NH, "n_embd": C, "ffn_hidden": 4 * C},
                         "B": B, "T": T},
                  params, inputs, targets, logits, loss, grads, losses)
    print(f"wrote {out}: {params.numel()} parameters, loss {loss.item():.6f}, losses {[round(x, 4) for x in losses]}")

if __name__ == "__main__":
    main(*sys.argv[1:])
