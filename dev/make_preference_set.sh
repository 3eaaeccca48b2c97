#!/usr/bin/env bash
# Makes a small preference set (DPO/IPO pairs) from Tiny Shakespeare, for `make train-dpo` (no Python). Each
# pair: "prompt" is a passage (2 consecutive lines of one speech, each followed by a newline), "chosen" the true
# next line, "rejected" the same line with its words in another order (a corruption a model that has learned
# some English should find less likely, and that has the same tokens, so no reward can come from word choice).
#   dev/make_preference_set.sh OUT.jsonl [TEXT_FILE] [PAIRS] [SEED]
# TEXT_FILE defaults to ../shared/data/tinyshakespeare.txt (GPTCU_DATA changes ../shared/data); PAIRS 256; SEED 1.
# Only the first 90% of the text's bytes are used: the train split of dev/prepare_shakespeare.sh (fine-tuning
# data comes from the data the model was trained on; make_choice_set.sh keeps the last 10% for evaluation).
# Lines that name a speaker ("ROMEO:") or have fewer than 4 words are never completions. Deterministic: pairs are
# evenly spaced over the eligible lines and the word order comes from a Park–Miller generator written in awk.
# The text is third-party: the set is made where it is used and never committed.
set -euo pipefail
out=${1:?usage: make_preference_set.sh OUT.jsonl [TEXT_FILE] [PAIRS] [SEED]}
text=${2:-${GPTCU_DATA:-../shared/data}/tinyshakespeare.txt}
pairs=${3:-256}
seed=${4:-1}
[ -f "$text" ] || { echo "make_preference_set.sh: no such file: $text (run 'make data', or pass TEXT_FILE)" >&2; exit 1; }
size=$(wc -c < "$text")
mkdir -p "$(dirname "$out")"
head -c $((size * 9 / 10)) "$text" | awk -v pairs="$pairs" -v seed="$seed" '
function rnd(n) { state = (state * 16807) % 2147483647; return state % n }   # Park-Miller, in [0, n)
function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/\t/, "\\t", s); return s }
function speaker(s) { return s ~ /^[A-Z][A-Za-z .'\''-]*:$/ }
{ sub(/\r$/, ""); line[++n] = $0 }
END {
    # eligible: a line of >= 4 words whose 2 previous lines are in the same speech (non-blank, not a speaker line)
    for (i = 3; i < n; i++)
        if (split(line[i], w, " ") >= 4 && !speaker(line[i]) && line[i-1] != "" && line[i-2] != "" && !speaker(line[i-1]) && !speaker(line[i-2]))
            ok[++ne] = i
    if (ne < pairs) { print "make_preference_set.sh: the text has too few eligible lines for " pairs " pairs" > "/dev/stderr"; exit 1 }
    state = seed % 2147483646 + 1
    for (k = 0; k < pairs; k++) {
        i = ok[int(k * ne / pairs) + 1]
        m = split(line[i], w, " ")
        do {  # Fisher-Yates over the words until the order differs from the original
            for (a = 1; a <= m; a++) v[a] = w[a]
            for (a = m; a > 1; a--) { b = rnd(a) + 1; t = v[a]; v[a] = v[b]; v[b] = t }
            bad = ""
            for (a = 1; a <= m; a++) bad = bad (a > 1 ? " " : "") v[a]
        } while (bad == line[i])
        printf "{\"prompt\": \"%s\\n%s\\n\", \"chosen\": \"%s\", \"rejected\": \"%s\", \"source\": \"tinyshakespeare line %d\"}\n", \
            esc(line[i-2]), esc(line[i-1]), esc(line[i]), esc(bad), i
    }
}' > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out: $pairs pairs from the first 90% of $text"
