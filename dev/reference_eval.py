#!/usr/bin/env python3
"""The evaluation fixture: what transformers computes for multiple-choice items, for test/test_eval.cu.
A dev tool (needs torch + transformers); the tests only read what it wrote.

  python3 dev/reference_eval.py            writes test/fixtures/eval_hf.json

For each Hugging Face fixture model (test/fixtures/hf_gpt2_tiny, hf_llama_tiny: vocabularies of ~100 tokens, so
their items are token ids): random items of 4 choices, and for every choice the log-probability transformers gives
each ending token, computed on context + ending alone (no batching, no padding), with the prediction by sum (acc)
and by mean per token (acc_norm, llm.c's rule; ties to the lowest index, as torch.argmin). And the tokenization
rule (llm.c's HellaSwag: tokens of the context, then tokens of " " + ending) by transformers' GPT2Tokenizer on
test/fixtures/tokenizer_small.

eval_hf.json: {"models": [{"dir", "items": [{"context": [ids], "choices": [[ids]], "label"}],
  "logprobs": [[[per ending token] per choice] per item], "sum_logprob": [[per choice]], "pred": [..], "pred_norm": [..]}],
  "tokenization": {"dir", "cases": [{"ctx", "ending", "ctx_ids", "ending_ids"}]}}
"""
import json, random
import torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer

OUT = "test/fixtures/eval_hf.json"
MODELS = ["test/fixtures/hf_gpt2_tiny", "test/fixtures/hf_llama_tiny"]
TOKENIZER = "test/fixtures/tokenizer_small"
ITEMS, CHOICES = 6, 4
TEXTS = [("A cat sits on the warm stones of the wall.", "It watches the birds in the garden below."),
         ("Then the baker opens the oven and takes out", "three loaves, golden and smelling of rye."),
         ("ROMEO:\nBut soft, what light", "through yonder window breaks?"),
         ("It's 1,234 miles; we'll see", "  two spaces, tabs\tand 'quotes'"),
         ("Café naïve — 東京", "émigré ✓")]


def score(model, context, choice):
    """log p(choice_k | context, choice_<k) for every k, from one unpadded forward of context + choice."""
    ids = torch.tensor([context + choice])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return [float(logp[len(context) - 1 + k, t]) for k, t in enumerate(choice)]


def model_case(directory, rng):
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    V, maxT = model.config.vocab_size, 24
    case = {"dir": directory, "items": [], "logprobs": [], "sum_logprob": [], "pred": [], "pred_norm": []}
    for _ in range(ITEMS):
        context = [rng.randrange(V) for _ in range(rng.randint(1, 12))]
        choices = [[rng.randrange(V) for _ in range(rng.randint(1, maxT - len(context)))] for _ in range(CHOICES)]
        lp = [score(model, context, c) for c in choices]
        sums = [sum(x) for x in lp]
        means = [s / len(x) for s, x in zip(sums, lp)]
        case["items"].append({"context": context, "choices": choices, "label": rng.randrange(CHOICES)})
        case["logprobs"].append(lp)
        case["sum_logprob"].append(sums)
        case["pred"].append(int(torch.tensor(sums).argmax()))
        case["pred_norm"].append(int(torch.tensor(means).argmax()))
    return case


def main():
    rng = random.Random(17)
    # transformers 5's GPT2Tokenizer takes the vocabulary and the merges themselves (file names are ignored)
    with open(TOKENIZER + "/encoder.json", encoding="utf-8") as f:
        vocab = json.load(f)
    with open(TOKENIZER + "/vocab.bpe", encoding="utf-8") as f:
        merges = [tuple(l.rstrip("\n").split(" ")) for l in f if l.strip() and not l.startswith("#version")]
    tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    cases = [{"ctx": c, "ending": e, "ctx_ids": tok.encode(c), "ending_ids": tok.encode(" " + e)} for c, e in TEXTS]
    out = {"models": [model_case(d, rng) for d in MODELS], "tokenization": {"dir": TOKENIZER, "cases": cases}}
    with open(OUT, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {OUT}: {ITEMS} items x {CHOICES} choices for each of {MODELS}; {len(cases)} tokenization cases")


if __name__ == "__main__":
    main()
