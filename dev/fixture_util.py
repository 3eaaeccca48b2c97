"""What dev/reference_gpt2.py and dev/reference_llama.py share: the AdamW steps the fixtures record, the
fixture file itself (layout: test/fixture.h), and the bf16 fixtures' pieces (BF16Copy, Attention). A dev tool
(needs torch); the tests only read fixtures."""
import json, struct
import torch
import torch.nn.functional as F

# The optimizer run every model fixture records: 10 AdamW steps with gradient clipping, weight decay on
# matrices and embeddings only (the rule of gpt.cuh's param_decays).
ADAMW = {"steps": 10, "lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0}


class BF16Copy(torch.autograd.Function):
    """A weight's bf16 copy, widened back to `dtype` for fp32 (or fp64) arithmetic; the gradient passes to the
    fp32 master unrounded, as our kernels accumulate dweight in fp32."""
    @staticmethod
    def forward(ctx, p, dtype):
        return p.to(torch.bfloat16).to(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.float(), None


class Attention(torch.autograd.Function):
    """Causal attention in fp32 on widened bf16 q, k, v (B, heads, T, hs) (k, v already repeated per query head),
    with the backward our flash kernels compute: P recomputed in fp32 and D = rowsum(dO ∘ O) from the STORED (bf16)
    output, where autograd's softmax backward would use the fp32 output."""
    @staticmethod
    def forward(ctx, q, k, v):
        T, hs = q.shape[-2], q.shape[-1]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        p = ((q @ k.transpose(-2, -1)) / hs ** 0.5).masked_fill(~causal, float("-inf")).softmax(dim=-1)
        out = p @ v
        ctx.save_for_backward(q, k, v, p, out.to(torch.bfloat16).to(out.dtype))
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, p, out_stored = ctx.saved_tensors
        scale = 1.0 / q.shape[-1] ** 0.5
        dv = p.transpose(-2, -1) @ dout
        dp = dout @ v.transpose(-2, -1)
        d = (dout * out_stored).sum(-1, keepdim=True)  # D = dO·O, O as stored
        ds = p * (dp - d)
        return scale * ds @ k, scale * ds.transpose(-2, -1) @ q, dv


def adamw_losses(model, loss_fn):
    """The loss before each AdamW step (loss_fn() -> (logits, loss)); changes the model's weights."""
    h = ADAMW
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": h["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"])
    losses = []
    for _ in range(h["steps"]):
        opt.zero_grad()
        _, l = loss_fn()
        l.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), h["grad_clip"])
        opt.step()
        losses.append(l.item())
    return losses


def reference_run(model, inputs, targets, V, layout, forward=None):
    """What every model fixture records, from the model's initial weights: logits and loss of one batch
    (targets -1 = ignored), every gradient in our layout (`layout(get)` maps HF parameters to gpt.cu's
    flat order), then the losses of the ADAMW steps. `forward(inputs) -> logits` replaces the model's own
    forward when given (the bf16 fixture's); the loss is always fp32. Returns (logits, loss, grads, losses)."""
    def loss_fn():
        logits = forward(inputs) if forward else model(inputs).logits
        return logits, F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1), ignore_index=-1)

    logits, loss = loss_fn()
    loss.backward()
    grads = layout(lambda p: p.grad)
    return logits, loss, grads, adamw_losses(model, loss_fn)


def write_fixture(out, header, params, inputs, targets, logits, loss, grads, losses):
    """header: {"model": ..., "B", "T", [extra keys]}; num_parameters and the ADAMW settings are added."""
    header = dict(header, num_parameters=params.numel(), **ADAMW)
    text = json.dumps(header).encode()
    with open(out, "wb") as f:
        f.write(b"GPTCUFIX" + struct.pack("<II", 1, len(text)) + text)
        f.write(params.numpy().astype("<f4").tobytes())
        f.write(inputs.numpy().astype("<i4").tobytes())
        f.write(targets.numpy().astype("<i4").tobytes())
        f.write(logits.detach().float().numpy().astype("<f4").tobytes())
        f.write(struct.pack("<f", loss.item()))
        f.write(grads.numpy().astype("<f4").tobytes())
        f.write(torch.tensor(losses).numpy().astype("<f4").tobytes())
