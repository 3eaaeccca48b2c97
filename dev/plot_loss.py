#!/usr/bin/env python3
"""Draws the loss curve of a training run as an SVG, from the JSONL log train_gpt writes.

    python3 dev/plot_loss.py out/shakespeare_cpu/log.jsonl [out.svg]

Train loss (per step) in blue, val loss (every val_every steps) in orange, and when the run evaluated a
multiple-choice set (train_gpt --eval-every N --eval-multiple-choice FILE) its accuracy in green and acc_norm
in dashed green, on a right-hand axis from 0 to 1. Plain Python, no plotting library: the picture is a few
polylines and labels.
"""
import json, math, sys

def main(log_path, svg_path=None):
    svg_path = svg_path or log_path.rsplit("/", 1)[0] + "/loss.svg"
    train, val, acc, acc_norm = [], [], [], []
    with open(log_path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if "loss" in r:
                train.append((r["step"], r["loss"]))
            if "val_loss" in r:
                val.append((r["step"], r["val_loss"]))
            if "mc_acc" in r:
                acc.append((r["step"], r["mc_acc"]))
                acc_norm.append((r["step"], r["mc_acc_norm"]))
    if not train and not val:
        sys.exit(f"{log_path}: no loss records")
    pts = train + val
    x0, x1 = min(p[0] for p in pts + acc), max(p[0] for p in pts + acc)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1
    W, H, M = 720, 420, 50
    sx = lambda x: M + (x - x0) / (x1 - x0) * (W - 2 * M)
    sy = lambda y: H - M - (y - y0) / (y1 - y0) * (H - 2 * M)
    sa = lambda a: H - M - a * (H - 2 * M)  # accuracy: 0..1 on the right-hand axis
    line = lambda ps, color, width, y=sy, dash="": ('<polyline fill="none" stroke="%s" stroke-width="%s"%s points="%s"/>'
                                     % (color, width, ' stroke-dasharray="4 3"' if dash else "",
                                        " ".join("%.1f,%.1f" % (sx(x), y(v)) for x, v in ps)))
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (M, H - M, W - M, H - M),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (M, M, M, H - M)]
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        x = x0 + (x1 - x0) * i / 4
        out.append('<text x="%d" y="%.1f" text-anchor="end">%.2f</text>' % (M - 5, sy(y) + 4, y))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (sx(x), H - M + 18, round(x)))
    if train:
        out.append(line(train, "#1f77b4", 1))
    if val:
        out.append(line(val, "#ff7f0e", 2))
    if acc:
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#2ca02c"/>' % (W - M, M, W - M, H - M))
        for i in range(5):
            out.append('<text x="%d" y="%.1f" fill="#2ca02c">%.2f</text>' % (W - M + 5, sa(i / 4) + 4, i / 4))
        out.append(line(acc, "#2ca02c", 2, sa))
        out.append(line(acc_norm, "#2ca02c", 1, sa, dash=True))
        out.append('<text x="%d" y="%d" fill="#2ca02c">accuracy (dashed: acc_norm)</text>' % (M, M - 20))
    out.append('<text x="%d" y="%d">step</text>' % (W // 2, H - 10))
    out.append('<text x="%d" y="%d" fill="#1f77b4">train loss</text>' % (W - M - 150, M - 20))
    out.append('<text x="%d" y="%d" fill="#ff7f0e">val loss</text>' % (W - M - 70, M - 20))
    out.append("</svg>")
    with open(svg_path, "w") as f:
        f.write("\n".join(out))
    print(f"wrote {svg_path}: {len(train)} train points, {len(val)} val points, {len(acc)} accuracy points")

if __name__ == "__main__":
    main(*sys.argv[1:])
