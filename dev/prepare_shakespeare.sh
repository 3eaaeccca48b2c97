#!/usr/bin/env bash
# Tokenizes Tiny Shakespeare with GPT-2 BPE into llm.c-style shards: OUT_DIR/train_000.bin (first 90%
# of the text) and OUT_DIR/val_000.bin (last 10%), as nanoGPT splits it.
#   dev/prepare_shakespeare.sh OUT_DIR [TEXT_FILE]
# TEXT_FILE defaults to ../shared/data/tinyshakespeare.txt; when that is absent the text is
# downloaded (karpathy/char-rnn's input.txt) into data/tinyshakespeare.txt.
set -euo pipefail
out=${1:?usage: prepare_shakespeare.sh OUT_DIR [TEXT_FILE]}
text=${2:-}
url=https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
if [ -z "$text" ]; then
  if [ -f ../shared/data/tinyshakespeare.txt ]; then
    text=../shared/data/tinyshakespeare.txt
  else
    text=data/tinyshakespeare.txt
    if [ ! -f "$text" ]; then
      echo "downloading Tiny Shakespeare from $url"
      mkdir -p data
      curl -fsSL "$url" -o "$text.part" || { echo "download failed: pass a local copy as the second argument" >&2; exit 1; }
      mv "$text.part" "$text"
    fi
  fi
fi
[ -f "$text" ] || { echo "no such file: $text" >&2; exit 1; }
vocab=${GPTCU_DATA:-../shared/data}/gpt2
mkdir -p "$out"
tokenizer/tok prepare --val-fraction 0.1 --out "$out" --vocab "$vocab" "$text"
