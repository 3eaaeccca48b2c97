#!/usr/bin/env python3
"""Writes test/fixtures/llama_tiny.bin: a small random-init Llama from Hugging Face `transformers`
(LlamaForCausalLM), one batch, everything PyTorch computes on it, and a greedy continuation, in gpt.cu's
parameter layout (gpt.cuh: param_sizes, arch llama). The Llama sibling of dev/reference_gpt2.py.

A dev tool (needs torch + transformers); the build and the tests only read the fixture it wrote.

  python3 dev/reference_llama.py              writes test/fixtures/llama_tiny.bin (below)
  python3 dev/reference_llama.py --bf16       writes test/fixtures/llama_tiny_bf16.bin: the same recipe in mixed
                                              precision (forward_bf16 below; no greedy continuation), n_embd 64,
                                              2 heads of 32 sharing 1 kv head, so params + grads fit < 300 KB
  python3 dev/reference_llama.py --hf         writes test/fixtures/hf_llama_tiny/: a LlamaForCausalLM as
                                              save_pretrained writes it (config.json, model.safetensors) and
                                              generation.json {V, prompt, greedy, logits}, as
                                              dev/reference_infer.py does for GPT-2
  python3 dev/reference_llama.py --check-hf DIR
                                              loads DIR (our export) with transformers and checks its greedy
                                              tokens and logits against the HF fixture

The config is as small as the fixture budget (< 1 MB) allows while still exercising what matters:
  n_head 4, n_kv_head 2  (GQA with two groups: query heads 0,1 read kv head 0, heads 2,3 read kv head 1)
  head size 32           (a size the fused attention kernels are compiled for)
  2 layers, ffn_hidden 16, vocab 29 padded to 32, untied lm_head, rope_theta 10000, rms_norm_eps 1e-5.

HF name → our tensor (gpt.cuh: ParamIndex):
  model.embed_tokens                     → wte      (Vp, C), rows V..Vp-1 zero
  layers[l].input_layernorm              → ln1w     (L, C)
  layers[l].self_attn.{q,k,v}_proj rows  → qkvw     (L, (NH + 2·NKV)·hs, C)  rows [q | k | v]
  layers[l].self_attn.o_proj             → attprojw (L, C, C)
  layers[l].post_attention_layernorm     → ln2w     (L, C)
  layers[l].mlp.{gate,up}_proj rows      → fcw      (L, 2H, C)  rows [gate | up]
  layers[l].mlp.down_proj                → fcprojw  (L, C, H)
  model.norm                             → lnfw     (C)
  lm_head                                → lm_head  (Vp, C), rows V..Vp-1 zero
HF's q_proj/k_proj rows are already in the order its rotate-half RoPE expects (the conversion script
from Meta's checkpoints permuted them once), and our RoPE is rotate-half too: rows are copied as they are.

Fixture layout (little-endian), as gpt2_tiny.bin:
  "GPTCUFIX" | uint32 version=1 | uint32 n | n bytes of JSON {model, B, T, num_parameters, steps, lr, beta1,
  beta2, eps, weight_decay, grad_clip, prompt, greedy}
  float32 params[P] | int32 inputs[B*T] | int32 targets[B*T] (-1 = ignored) | float32 logits[B*T*V]
  float32 loss | float32 grads[P] | float32 losses[steps]  (the loss before each of `steps` AdamW steps)
The JSON's `prompt` (token ids) and `greedy` (the tokens HF generate() appends with do_sample=False,
computed with the initial weights, before the AdamW steps) are the Llama fixture's additions.
"""
import json, sys
import torch
import torch.nn.functional as F
from fixture_util import Attention, BF16Copy, reference_run, write_fixture
from transformers import LlamaConfig, LlamaForCausalLM

# The bf16 fixture's forward: our mixed-precision rule written out in PyTorch, as dev/reference_gpt2.py's
# forward_bf16 (read its comment first); Llama's ops under the same rule: RMSNorm (fp32 statistics), RoPE rotating
# the bf16 q and k in fp32 and storing them rounded (its backward rounds the rotated gradient again, as our in-place
# rope_backward does), attention with GQA in fp32 (fixture_util.Attention; the gradients of a kv head's group
# add in fp32, as in our dK/dV kernel), SwiGLU in fp32 with one rounding, the untied lm_head through autocast.
# RoPE's angle is computed as ours (rope_angle: theta^(-2i/hs) in double, rounded to fp32, times the position in
# fp32).
def forward_bf16(model, inputs, theta):
    m, cfg = model.model, model.config
    C, NH, NKV, H = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    hs, eps = C // NH, cfg.rms_norm_eps
    B, T = inputs.shape
    f = lambda x: x.float()                    # widen a bf16 value: exact
    r = lambda x: x.to(torch.bfloat16)         # store: one rounding to nearest even
    w = lambda p: BF16Copy.apply(p, torch.float32)

    def linear(x, weight):  # x·weightᵀ, autocast's bf16 matmul
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.linear(x, weight)

    def rmsnorm(xf, weight):  # xf: the widened input
        return r(xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w(weight))

    inv_freq = torch.tensor([theta_pow(theta, i, hs) for i in range(hs // 2)], dtype=torch.float32)
    angle = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (T, hs/2)
    cos, sin = angle.cos(), angle.sin()

    def rope(x):  # (B, T, heads, hs) bf16 -> rotated, bf16
        x1, x2 = f(x[..., : hs // 2]), f(x[..., hs // 2:])
        c, s_ = cos[None, :, None, :], sin[None, :, None, :]
        return r(torch.cat([x1 * c - x2 * s_, x2 * c + x1 * s_], dim=-1))

    x = r(w(m.embed_tokens.weight)[inputs])  # (B, T, C): the bf16 copy's rows
    for layer in m.layers:
        a = layer.self_attn
        xf = f(x)  # one widened copy for the norm and the skip: their gradients add in fp32
        ln = rmsnorm(xf, layer.input_layernorm.weight)
        # one matmul over the concatenated weights, as our qkv and fc matmuls: the gradient w.r.t. ln is one fp32
        # sum rounded once (three separate linears would round each part and then their sum)
        qkv = linear(ln, torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        q, k, v = qkv.split([NH * hs, NKV * hs, NKV * hs], dim=-1)
        q, k, v = rope(q.reshape(B, T, NH, hs)), rope(k.reshape(B, T, NKV, hs)), v.reshape(B, T, NKV, hs)
        q, k, v = (f(t).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hs)
        k, v = (t.repeat_interleave(NH // NKV, dim=1) for t in (k, v))  # query head h reads kv head h / (NH/NKV)
        y = r(Attention.apply(q, k, v).transpose(1, 2).reshape(B, T, C))
        x = r(xf + f(linear(y, a.o_proj.weight)))
        xf = f(x)
        ln = rmsnorm(xf, layer.post_attention_layernorm.weight)
        gate, up = f(linear(ln, torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]))).split(H, dim=-1)
        act = r(F.silu(gate) * up)
        x = r(xf + f(linear(act, layer.mlp.down_proj.weight)))
    return linear(rmsnorm(f(x), m.norm.weight), model.lm_head.weight)  # (B, T, V) bf16


def theta_pow(theta, i, hs):  # attention.cuh's rope_angle: float(theta^(-2i/hs)) computed in double
    return float(torch.tensor(theta ** (-2.0 * i / hs), dtype=torch.float64).float())


def main(*args):
    bf16 = "--bf16" in args
    paths = [a for a in args if not a.startswith("--")]
    out = paths[0] if paths else "test/fixtures/llama_tiny_bf16.bin" if bf16 else "test/fixtures/llama_tiny.bin"
    torch.manual_seed(42)
    V, Vp, maxT, L, NH, NKV, C, H, B, T = 29, 32, 32, 2, 4, 2, 128, 16, 2, 8
    if bf16: NH, NKV, C = 2, 1, 64  # hs = 32 still; 35k parameters, so params + grads stay under 300 KB
    theta, eps_norm = 10000.0, 1e-5
    cfg = LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=H, num_hidden_layers=L, num_attention_heads=NH,
                      num_key_value_heads=NKV, max_position_embeddings=maxT, rms_norm_eps=eps_norm, rope_theta=theta,
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
                      initializer_range=0.05, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(cfg).float()
    model.config._attn_implementation = "eager"
    with torch.no_grad():  # non-trivial norm gains, so their gradients are tested too
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    m = model.model

    def layout(get):  # our tensor order; `get` maps a HF parameter to the tensor to store (param or grad)
        pad = lambda w: torch.cat([w, torch.zeros(Vp - V, C)], 0)
        stack = lambda f: torch.stack([f(layer) for layer in m.layers])
        attn = lambda l: l.self_attn
        parts = [
            pad(get(m.embed_tokens.weight)),
            stack(lambda l: get(l.input_layernorm.weight)),
            stack(lambda l: torch.cat([get(attn(l).q_proj.weight), get(attn(l).k_proj.weight), get(attn(l).v_proj.weight)], 0)),
            stack(lambda l: get(attn(l).o_proj.weight)),
            stack(lambda l: get(l.post_attention_layernorm.weight)),
            stack(lambda l: torch.cat([get(l.mlp.gate_proj.weight), get(l.mlp.up_proj.weight)], 0)),
            stack(lambda l: get(l.mlp.down_proj.weight)),
            get(m.norm.weight),
            pad(get(model.lm_head.weight)),
        ]
        return torch.cat([p.detach().reshape(-1).float() for p in parts])

    params = layout(lambda p: p)
    inputs = torch.randint(0, V, (B, T))
    targets = torch.randint(0, V, (B, T))
    targets[1, 3] = -1  # one ignored position: the mean is over the 15 others

    if bf16:  # no greedy continuation: bf16 logits of a random model can tie
        logits, loss, grads, losses = reference_run(model, inputs, targets, V, layout,
                                                    lambda idx: forward_bf16(model, idx, theta))
        write_fixture(out, {"model": {"arch": "llama", "max_seq_len": maxT, "vocab_size": V, "padded_vocab_size": Vp,
                                       "n_layer": L, "n_head": NH, "n_kv_head": NKV, "n_embd": C, "ffn_hidden": H,
                                       "rope_theta": theta, "norm_eps": eps_norm, "tied_embeddings": False},
                             "B": B, "T": T, "precision": "bf16"},
                      params, inputs, targets, logits, loss, grads, losses)
        print(f"wrote {out}: {params.numel()} parameters, loss {loss.item():.6f}, "
              f"losses {[round(x, 4) for x in losses]}")
        return

    # the greedy continuation first, with the initial weights (HF generate uses its KV cache; the test
    # recomputes the whole sequence each token, so this also checks cached vs uncached decoding)
    prompt = torch.tensor([[3, 14, 15, 9, 26]])
    new_tokens = 8
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        greedy = generated[0, prompt.shape[1]:].tolist()
        assert len(greedy) == new_tokens, greedy
        # the margin between the best and second-best logit along the way: far above fp32 noise, or
        # "the same greedy tokens" would be a coin toss
        full = model(generated[:, :-1]).logits[0, prompt.shape[1] - 1:]
        top2 = full.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).min().item()
        assert margin > 1e-3, f"greedy margin {margin} too small for an exact-token test; change the seed"

    logits, loss, grads, losses = reference_run(model, inputs, targets, V, layout)

    write_fixture(out, {"model": {"arch": "llama", "max_seq_len": maxT, "vocab_size": V, "padded_vocab_size": Vp,
                                   "n_layer": L, "n_head": NH, "n_kv_head": NKV, "n_embd": C, "ffn_hidden": H,
                                   "rope_theta": theta, "norm_eps": eps_norm, "tied_embeddings": False},
                         "B": B, "T": T, "prompt": prompt[0].tolist(), "greedy": greedy},
                  params, inputs, targets, logits, loss, grads, losses)
    print(f"wrote {out}: {params.numel()} parameters, loss {loss.item():.6f}, greedy {greedy} (margin {margin:.4f}), "
          f"losses {[round(x, 4) for x in losses]}")

HF_FIXTURE = "test/fixtures/hf_llama_tiny"
HF_NEW_TOKENS = 12


def hf_greedy(model, prompt):
    """HF generate() (KV cache) for the tokens; full forwards for the logits that chose each of them."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=HF_NEW_TOKENS, min_new_tokens=HF_NEW_TOKENS,
                             do_sample=False)
        tokens = out[0, len(prompt):].tolist()
        logits = model(out[:, :-1]).logits[0, len(prompt) - 1:]
    assert tokens == logits.argmax(-1).tolist(), "generate() with its cache disagrees with full recomputation"
    return tokens, logits


def write_hf(out=HF_FIXTURE):
    """A Hugging Face LlamaForCausalLM directory as save_pretrained writes it, for the safetensors loader:
    other choices than llama_tiny.bin on purpose: MQA (1 kv head), tied embeddings, rope_theta 500000 and
    rms_norm_eps 1e-6 (Llama 3's), a vocabulary our loader pads (100 -> 128), and bf16 weights (the loader
    widens them; the reference runs the same widened weights in fp32)."""
    import os
    torch.manual_seed(3)
    V, maxT, L, NH, NKV, C, H = 100, 64, 2, 4, 1, 128, 96
    cfg = LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=H, num_hidden_layers=L, num_attention_heads=NH,
                      num_key_value_heads=NKV, max_position_embeddings=maxT, rms_norm_eps=1e-6, rope_theta=500000.0,
                      tie_word_embeddings=True, attention_bias=False, mlp_bias=False, hidden_act="silu",
                      initializer_range=0.4, bos_token_id=V - 1, eos_token_id=V - 1, pad_token_id=None)
    model = LlamaForCausalLM(cfg).float().eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            p.copy_(p.to(torch.bfloat16).float())  # exactly representable in bf16
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    # the reference is what transformers computes from the saved directory, in fp32: not the model in memory,
    # whose non-persistent RoPE buffer (inv_freq) the bf16 round trip has rounded
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    model.config._attn_implementation = "eager"
    prompt = [int(x) for x in torch.randint(0, V - 1, (6,))]
    tokens, logits = hf_greedy(model, prompt)
    top2 = logits.topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]).min().item()
    assert margin > 1e-3, f"greedy margin {margin} too small for an exact-token test; change the seed"
    with open(os.path.join(out, "generation.json"), "w") as f:
        json.dump({"V": V, "prompt": prompt, "greedy": tokens, "logits": logits.tolist()}, f)
    for name in sorted(os.listdir(out)):
        print(f"{out}/{name}: {os.path.getsize(os.path.join(out, name))} bytes")
    print("prompt", prompt, "greedy", tokens, f"(margin {margin:.4f})")


def check_hf(directory):
    """Loads DIR (e.g. written by `infer_gpt --export-hf DIR` from a Llama) with transformers and checks that its
    greedy tokens and logits equal the HF fixture's."""
    import os
    with open(os.path.join(HF_FIXTURE, "generation.json")) as f:
        fix = json.load(f)
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tokens, logits = hf_greedy(model, fix["prompt"])
    ref = torch.tensor(fix["logits"])
    rel = float((logits[:, : ref.shape[1]] - ref).norm() / ref.norm())
    ok = tokens == fix["greedy"] and rel <= 1e-5
    print(f"{directory}: transformers loaded it; greedy tokens {'equal' if tokens == fix['greedy'] else 'DIFFER'}, "
          f"logits relative error {rel:.2e} -> {'OK' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--hf":
        write_hf()
    elif len(sys.argv) == 3 and sys.argv[1] == "--check-hf":
        check_hf(sys.argv[2])
    else:
        main(*sys.argv[1:])
