#!/usr/bin/env python3
"""Writes test/fixtures/gpt2_tiny.bin: a small random-init GPT-2 from Hugging Face `transformers`,
one batch, and everything PyTorch computes on it, in gpt.cu's parameter layout (gpt.cuh: param_sizes).

A dev tool (needs torch + transformers); the build and the tests only read the fixture it wrote.

  python3 dev/reference_gpt2.py           writes test/fixtures/gpt2_tiny.bin (fp32)
  python3 dev/reference_gpt2.py --bf16    writes test/fixtures/gpt2_tiny_bf16.bin: the same recipe in mixed
                                          precision (forward_bf16 below), n_embd 32 and one head of 32 so that
                                          params + grads fit the fixture budget (< 300 KB)
  python3 dev/reference_gpt2.py --bf16 --compare
                                          also prints how far that fixture is from pure autocast (HF's own
                                          forward under torch.autocast) and from itself computed in fp64
                                          between the roundings; writes nothing

Fixture layout (little-endian):
  "GPTCUFIX" | uint32 version=1 | uint32 n | n bytes of JSON {model, B, T, num_parameters, steps, lr, beta1,
  beta2, eps, weight_decay, grad_clip[, precision: "bf16"]}
  float32 params[P] | int32 inputs[B*T] | int32 targets[B*T] (-1 = ignored) | float32 logits[B*T*V]
  float32 loss | float32 grads[P] | float32 losses[steps]  (the loss before each of `steps` AdamW steps)
"""
import sys
import torch
import torch.nn.functional as F
from fixture_util import Attention, BF16Copy, reference_run, write_fixture
from transformers import GPT2Config, GPT2LMHeadModel

# The bf16 fixture's forward: gpt.cu's mixed-precision rule (layers.cuh, top), written out in PyTorch.
#   - weights: fp32 masters (the HF parameters, which torch's AdamW updates); every use reads their bf16 copy;
#   - every activation is STORED in bf16: the embeddings' sum, each norm's output, qkv, the attention output,
#     each projection, the residual stream after each add, GELU's output, the logits (r() below rounds once);
#   - the matmuls (c_attn, c_proj, c_fc, mlp c_proj and the tied classifier) are torch.autocast's bf16 linear:
#     bf16 inputs, fp32 sums, bias added in fp32, one rounding of the output (checked: bit for bit what
#     (x·Wᵀ + b) in fp32 on the bf16 values rounds to, on this CPU's oneDNN);
#   - everything else computes in fp32 on the widened bf16 inputs and rounds its output once: LayerNorm (fp32
#     statistics), GELU, the residual adds, attention (scores, softmax and P·V in fp32, and the flash kernels'
#     backward: fixture_util.Attention), the loss (fp32 log-softmax of the bf16 logits).
# Pure autocast (HF's forward under torch.autocast) would keep the residual stream, the embeddings' sum, the
# norms and GELU in fp32 and round the attention scores to bf16; it is not our rule, so this forward adds the
# .to(bfloat16) casts (--compare prints the difference). Gradients are autograd's through the same graph, which
# mirrors our backward kernels: each op's gradient w.r.t. a bf16 activation is computed in fp32 and rounded to
# bf16 once; where the residual stream feeds two ops (the next norm and the skip), both read one widened copy, so
# autograd adds the two gradients in fp32 and rounds the sum once (our norm backward adds into d residual and
# rounds once); norm and embedding weights are read through BF16Copy, whose gradient reaches the fp32 master
# unrounded (ours are fp32 sums). One difference is left, and it is autocast's: the gradient of each matmul's
# weight and bias is the gradient of autocast's bf16 copy, so it is rounded once to bf16 before it reaches the
# fp32 master (ours stays fp32; for the tied wte, the classifier's part is rounded, the embedding's is not).
# test/fixture.h derives the tolerances from that.
def forward_bf16(model, inputs, fp64=False):
    tr, cfg = model.transformer, model.config
    C, NH = cfg.n_embd, cfg.n_head
    hs = C // NH
    B, T = inputs.shape
    wide = torch.float64 if fp64 else torch.float32  # fp64: the same roundings, other sums (--compare)
    f = lambda x: x.to(wide)                   # widen a bf16 value: exact
    r = lambda x: x.to(torch.bfloat16)         # store: one rounding to nearest even
    w = lambda p: BF16Copy.apply(p, wide)      # a weight's bf16 copy, widened

    def linear(x, weight, bias=None):  # x·weightᵀ + bias, weight (out, in) as nn.Linear's
        if fp64: return r(f(x) @ w(weight).t() + (w(bias) if bias is not None else 0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.linear(x, weight, bias)

    def layernorm(xf, ln):  # xf: the widened input
        return r(F.layer_norm(xf, (C,), w(ln.weight), w(ln.bias), cfg.layer_norm_epsilon))

    # HF's Conv1D weights are (in, out): .t() gives nn.Linear's (out, in)
    x = r(w(tr.wte.weight)[inputs] + w(tr.wpe.weight)[:T])  # (B, T, C)
    for h in tr.h:
        xf = f(x)  # one widened copy for the norm and the skip: their gradients add in fp32
        qkv = f(linear(layernorm(xf, h.ln_1), h.attn.c_attn.weight.t(), h.attn.c_attn.bias))  # (B, T, 3C)
        q, k, v = (t.reshape(B, T, NH, hs).transpose(1, 2) for t in qkv.split(C, dim=-1))  # (B, NH, T, hs)
        y = r(Attention.apply(q, k, v).transpose(1, 2).reshape(B, T, C))
        x = r(xf + f(linear(y, h.attn.c_proj.weight.t(), h.attn.c_proj.bias)))
        xf = f(x)
        fch = linear(layernorm(xf, h.ln_2), h.mlp.c_fc.weight.t(), h.mlp.c_fc.bias)
        act = r(F.gelu(f(fch), approximate="tanh"))
        x = r(xf + f(linear(act, h.mlp.c_proj.weight.t(), h.mlp.c_proj.bias)))
    return linear(layernorm(f(x), tr.ln_f), tr.wte.weight)  # (B, T, V) bf16, the tied classifier


def main(*args):
    bf16 = "--bf16" in args
    torch.manual_seed(42)
    V, Vp, maxT, L, NH, C, B, T = 61, 64, 16, 2, 2, 64, 2, 8  # hs = 32: a head size the fused kernel compiles
    if bf16: NH, C = 1, 32  # hs = 32 still; 28k parameters, so params + grads stay under 300 KB
    paths = [a for a in args if not a.startswith("--")]  # an output path, as before --bf16 existed
    out = paths[0] if paths else "test/fixtures/gpt2_tiny_bf16.bin" if bf16 else "test/fixtures/gpt2_tiny.bin"
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

    if bf16 and "--compare" in args:
        return compare(model, inputs, forward_bf16)
    forward = (lambda idx: forward_bf16(model, idx)) if bf16 else None
    logits, loss, grads, losses = reference_run(model, inputs, targets, V, layout, forward)

    header = {"model": {"arch": "gpt2", "max_seq_len": maxT, "vocab_size": V, "padded_vocab_size": Vp,
                        "n_layer": L, "n_head": NH, "n_kv_head": NH, "n_embd": C, "ffn_hidden": 4 * C},
              "B": B, "T": T}
    if bf16: header["precision"] = "bf16"
    write_fixture(out, header, params, inputs, targets, logits, loss, grads, losses)
    print(f"wrote {out}: {params.numel()} parameters, loss {loss.item():.6f}, losses {[round(x, 4) for x in losses]}")


def compare(model, inputs, forward_bf16):
    """How far the bf16 fixture's logits are from (a) the same recipe with fp64 between the roundings (only the
    sums' order differs: the floor any faithful implementation sits on), (b) pure autocast, (c) fp32; in units
    of u = 2^-8 relative to the fp32 logits' RMS."""
    u = 2.0 ** -8
    with torch.no_grad():
        ours = forward_bf16(model, inputs).double()
        other = forward_bf16(model, inputs, fp64=True).double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(inputs).logits.double()
        fp32 = model(inputs).logits.double()
    rms = fp32.pow(2).mean().sqrt()
    for name, x in (("fp64 between roundings", other), ("pure autocast", auto), ("fp32", fp32)):
        d = (ours - x).abs()
        print(f"bf16 fixture vs {name}: max |diff| {d.max() / (u * rms):.2f} u·rms, "
              f"relative norm {(ours - x).norm() / x.norm() / u:.3f} u, {(d > 0).sum().item()} of {d.numel()} differ")


if __name__ == "__main__":
    main(*sys.argv[1:])
