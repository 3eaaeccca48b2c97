"""The official `openai` Python client against `infer_gpt --serve` (pip install openai; not part of make test).

    ./infer_gpt_cpu --model M --serve --port 8000 --model-name tiny &
    python3 dev/openai_client_example.py --base-url http://127.0.0.1:8000/v1 --model tiny

Completes, streams, asks for log-probabilities and shows that errors arrive as the client's exceptions.
"""
import argparse

import openai

ap = argparse.ArgumentParser()
ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
ap.add_argument("--model", default="tiny")
args = ap.parse_args()
client = openai.OpenAI(base_url=args.base_url, api_key="unused")  # the server checks no key

print("models:", [m.id for m in client.models.list()])
r = client.completions.create(model=args.model, prompt="To be", max_tokens=8, temperature=0, logprobs=2)
print("completion:", repr(r.choices[0].text), r.choices[0].finish_reason, r.usage)
print("token logprobs:", r.choices[0].logprobs.token_logprobs)
pieces = []
for chunk in client.completions.create(model=args.model, prompt="To be", max_tokens=8, temperature=0, stream=True,
                                       stream_options={"include_usage": True}):
    if chunk.choices:
        pieces.append(chunk.choices[0].text)
    else:
        print("stream usage:", chunk.usage)
print("streamed:", repr("".join(pieces)), "in", len(pieces), "chunks; same as the completion:", "".join(pieces) == r.choices[0].text)
seeded = [client.completions.create(model=args.model, prompt="To be", max_tokens=8, temperature=0.9, seed=7).choices[0].text
          for _ in range(2)]
print("seeded sampling reproducible:", seeded[0] == seeded[1])
for bad in [dict(max_tokens=100000), dict(model="gpt-4"), dict(temperature=-1), dict(n=2)]:
    kw = dict(model=args.model, prompt="To be", max_tokens=4) | bad
    try:
        client.completions.create(**kw)
        print("no error for", bad)
    except openai.APIStatusError as e:
        print(f"{bad} -> {type(e).__name__} {e.status_code}: {e.message}")
