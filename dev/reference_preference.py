#!/usr/bin/env python3
"""The preference-loss fixture: DPO, IPO and KTO losses and gradients by PyTorch autograd on a tiny
model, for test/test_preference.cu. A dev tool (needs torch + transformers + safetensors); the tests only read
what it wrote.

  python3 dev/reference_preference.py      writes test/fixtures/preference_hf/

The reference model is test/fixtures/hf_gpt2_tiny (vocabulary 97, so the pairs are token ids); the policy is
the same model with every weight moved by N(0, 0.05²) noise (seed 18), so policy and reference disagree and
the losses are not at their starting values. Everything runs in float64, so the fixture is exact to ~1e-12 and
the test measures only our fp32 error. Each row (prompt + completion) is scored on its own, unpadded, so the
fixture is independent of our batch layout.

preference.json: {"beta", "weight_desirable", "weight_undesirable", "pairs": [{"prompt", "chosen", "rejected"}],
  "policy_logp": [2P], "ref_logp": [2P] (rows [chosen | rejected]), and per objective ("dpo", "ipo", "kto"):
  {"loss", "dlogp": [2P] (d loss / d policy_logp), ["z0" for kto]}}
policy.safetensors: the policy's weights; grad_dpo / grad_ipo / grad_kto.safetensors: d loss / d weight, all
under the model's own tensor names (hf.h maps them to gpt.cu's layout).
KTO reads the pairs as 2P examples: the chosen completions desirable, the rejected ones undesirable.
"""
import copy, json, os, random
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

OUT = "test/fixtures/preference_hf"
MODEL = "test/fixtures/hf_gpt2_tiny"
PAIRS, BETA, W_DESIRABLE, W_UNDESIRABLE = 4, 0.5, 1.0, 1.5


def sequence_logp(model, prompt, completion):
    """log π(completion | prompt): the summed log-probabilities of the completion's tokens, one unpadded row."""
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(ids).logits[0], dim=-1)
    return sum(logp[len(prompt) - 1 + k, t] for k, t in enumerate(completion))


def losses(kind, pi, ref, P):
    """pi, ref: (2P) rows [chosen | rejected]; the mean loss of preference.cuh's section 2, and z0 for KTO."""
    if kind == "kto":
        r = pi - ref
        z0 = torch.clamp(r.mean(), min=0).detach()  # the reference point carries no gradient
        desirable = W_DESIRABLE * (1 - torch.sigmoid(BETA * (r[:P] - z0)))
        undesirable = W_UNDESIRABLE * (1 - torch.sigmoid(BETA * (z0 - r[P:])))
        return torch.cat([desirable, undesirable]).mean(), float(z0)
    h = (pi[:P] - ref[:P]) - (pi[P:] - ref[P:])
    if kind == "dpo":
        return -torch.nn.functional.logsigmoid(BETA * h).mean(), None
    return ((h - 1 / (2 * BETA)) ** 2).mean(), None


def main():
    torch.manual_seed(18)
    rng = random.Random(18)
    ref_model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).double().eval()
    policy = copy.deepcopy(ref_model)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    V, maxT = ref_model.config.vocab_size, ref_model.config.n_positions
    pairs = []
    for _ in range(PAIRS):
        prompt = [rng.randrange(V) for _ in range(rng.randint(1, 8))]
        chosen = [rng.randrange(V) for _ in range(rng.randint(1, maxT - len(prompt)))]
        rejected = [rng.randrange(V) for _ in range(rng.randint(1, maxT - len(prompt)))]
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    rows = [(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs]
    with torch.no_grad():
        ref = torch.stack([sequence_logp(ref_model, x, y) for x, y in rows])
    out = {"beta": BETA, "weight_desirable": W_DESIRABLE, "weight_undesirable": W_UNDESIRABLE, "pairs": pairs,
           "ref_logp": ref.tolist()}
    os.makedirs(OUT, exist_ok=True)
    names = [n for n, _ in policy.named_parameters()]  # a tied lm_head is not listed (it is wte)
    save_file({n: p.detach().float().contiguous() for n, p in policy.named_parameters()}, f"{OUT}/policy.safetensors")
    for kind in ("dpo", "ipo", "kto"):
        policy.zero_grad()
        pi = torch.stack([sequence_logp(policy, x, y) for x, y in rows])
        pi.retain_grad()
        loss, z0 = losses(kind, pi, ref, PAIRS)
        loss.backward()
        out["policy_logp"] = pi.tolist()
        out[kind] = {"loss": loss.item(), "dlogp": pi.grad.tolist()}
        if z0 is not None:
            out[kind]["z0"] = z0
        grads = dict(policy.named_parameters())
        save_file({n: grads[n].grad.float().contiguous() for n in names}, f"{OUT}/grad_{kind}.safetensors")
    with open(f"{OUT}/preference.json", "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {OUT}: {PAIRS} pairs, beta {BETA}; losses " +
          ", ".join(f"{k} {out[k]['loss']:.6f}" for k in ("dpo", "ipo", "kto")))


if __name__ == "__main__":
    main()
