#!/usr/bin/env python3
"""Hugging Face fixtures for inference. A dev tool (needs torch + transformers); the build and
the tests only read what it wrote.

  python3 dev/reference_infer.py                   writes test/fixtures/hf_gpt2_tiny/: a random-init small
                                                   GPT2LMHeadModel (save_pretrained: config.json +
                                                   model.safetensors) and generation.json
  python3 dev/reference_infer.py --check-logits DIR IDS FILE
                                                   loads DIR with transformers, runs the comma-separated token
                                                   ids IDS and compares the last position's logits with FILE
                                                   (raw float32, from `infer_gpt --prompt-ids IDS --max-tokens 1
                                                   --dump-logits FILE`): a model trained here, exported, loaded
  python3 dev/reference_infer.py --check DIR       loads DIR (e.g. written by `infer_gpt --export-hf DIR`)
                                                   with transformers and checks that its logits and greedy
                                                   tokens equal the fixture's

generation.json: {"prompt": [ids], "greedy": [ids] (max_new_tokens greedy tokens after the prompt),
  "logits": [[V floats] per generated token: the logits that chose it], "V": V}
"""
import json, os, sys
import torch
from transformers import GPT2Config, GPT2LMHeadModel

FIXTURE = "test/fixtures/hf_gpt2_tiny"
V, MAXT, L, NH, C = 97, 32, 2, 4, 32
NEW_TOKENS = 12


def greedy(model, prompt):
    ids = torch.tensor([prompt])
    tokens, logits = [], []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            row = model(ids).logits[0, -1]
            nxt = int(torch.argmax(row))
            tokens.append(nxt)
            logits.append([float(x) for x in row])
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return tokens, logits


def write(out=FIXTURE):
    torch.manual_seed(1234)
    cfg = GPT2Config(vocab_size=V, n_positions=MAXT, n_embd=C, n_layer=L, n_head=NH, n_inner=None,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=V - 1, eos_token_id=V - 1)
    model = GPT2LMHeadModel(cfg).float().eval()
    with torch.no_grad():  # larger weights than the 0.02 default, so the logits are far from uniform
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.dim() == 2:
                p.mul_(5.0)
            elif "ln_" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    prompt = [int(x) for x in torch.randint(0, V - 1, (7,))]
    tokens, logits = greedy(model, prompt)
    with open(os.path.join(out, "generation.json"), "w") as f:
        json.dump({"V": V, "prompt": prompt, "greedy": tokens, "logits": logits}, f)
    for name in sorted(os.listdir(out)):
        print(f"{out}/{name}: {os.path.getsize(os.path.join(out, name))} bytes")
    print("prompt", prompt, "greedy", tokens)


def check(directory):
    with open(os.path.join(FIXTURE, "generation.json")) as f:
        fix = json.load(f)
    model = GPT2LMHeadModel.from_pretrained(directory).float().eval()
    tokens, logits = greedy(model, fix["prompt"])
    ref = torch.tensor(fix["logits"])
    got = torch.tensor(logits)[:, : ref.shape[1]]
    rel = float((got - ref).norm() / ref.norm())
    ok = tokens == fix["greedy"] and rel <= 1e-5
    print(f"{directory}: transformers loaded it; greedy tokens {'equal' if tokens == fix['greedy'] else 'DIFFER'}, "
          f"logits relative error {rel:.2e} -> {'OK' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


def check_logits(directory, ids, path):
    import numpy as np
    model = GPT2LMHeadModel.from_pretrained(directory).float().eval()
    with torch.no_grad():
        ref = model(torch.tensor([[int(x) for x in ids.split(",")]])).logits[0, -1]
    ours = torch.from_numpy(np.fromfile(path, dtype="<f4"))
    rel = float((ours - ref).norm() / ref.norm())
    ok = ours.shape == ref.shape and rel <= 1e-4
    print(f"{directory}: transformers logits vs {path}: relative error {rel:.2e}, argmax {int(ref.argmax())} vs "
          f"{int(ours.argmax())} -> {'OK' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--check-logits":
        check_logits(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        write(*sys.argv[1:])
