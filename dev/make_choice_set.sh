#!/usr/bin/env bash
# Makes a small multiple-choice set in the HellaSwag format from Tiny Shakespeare (no Python: make test and
# make eval run it). Each item: "ctx" is a passage (2–3 consecutive lines of one speech), "endings" are the
# true next line and three lines drawn from elsewhere in the text, "label" the true one's index.
#   dev/make_choice_set.sh OUT.jsonl [TEXT_FILE] [ITEMS] [SEED]
# TEXT_FILE defaults to ../shared/data/tinyshakespeare.txt (GPTCU_DATA changes ../shared/data); ITEMS 200;
# SEED 1. Only the last 10% of the text's bytes are used: the val split of dev/prepare_shakespeare.sh, which
# train_gpt never trains on, so the set is not contaminated by the training data. Lines that name a speaker
# ("ROMEO:") or are shorter than 12 characters are never endings. Deterministic: items are evenly spaced
# over the eligible lines and the distractors and label come from a Park–Miller generator written in awk
# (its products stay below 2^53, exact in awk's doubles), so every awk gives the same file.
# The text is third-party: the set is made where it is used and never committed.
set -euo pipefail
out=${1:?usage: make_choice_set.sh OUT.jsonl [TEXT_FILE] [ITEMS] [SEED]}
text=${2:-${GPTCU_DATA:-../shared/data}/tinyshakespeare.txt}
items=${3:-200}
seed=${4:-1}
[ -f "$text" ] || { echo "make_choice_set.sh: no such file: $text (run 'make data', or pass TEXT_FILE)" >&2; exit 1; }
size=$(wc -c < "$text")
mkdir -p "$(dirname "$out")"
tail -c +$((size * 9 / 10 + 1)) "$text" | awk -v items="$items" -v seed="$seed" '
function rnd(n) { state = (state * 16807) % 2147483647; return state % n }   # Park-Miller, in [0, n)
function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/\t/, "\\t", s); return s }
function speaker(s) { return s ~ /^[A-Z][A-Za-z .'\''-]*:$/ }
NR > 1 { sub(/\r$/, ""); line[++n] = $0 }            # line 1 may start mid-line: dropped
END {
    # an ending: a line of at least 12 characters that does not name a speaker
    for (i = 1; i <= n; i++) if (length(line[i]) >= 12 && !speaker(line[i])) pool[++np] = i
    # eligible: an ending whose 2 previous lines are in the same speech (non-blank, not a speaker line)
    for (i = 3; i <= n; i++)
        if (length(line[i]) >= 12 && !speaker(line[i]) && line[i-1] != "" && line[i-2] != "" && !speaker(line[i-1]) && !speaker(line[i-2]))
            ok[++ne] = i
    if (ne < items || np < 4 * items) { print "make_choice_set.sh: the text has too few eligible lines for " items " items" > "/dev/stderr"; exit 1 }
    state = seed % 2147483646 + 1
    for (k = 0; k < items; k++) {
        i = ok[int(k * ne / items) + 1]
        ctx = esc(line[i-2]) "\\n" esc(line[i-1])                      # a JSON "\n" between lines
        if (i > 3 && line[i-3] != "" && !speaker(line[i-3])) ctx = esc(line[i-3]) "\\n" ctx
        label = rnd(4)
        for (c = 0; c < 4; c++) {
            if (c == label) { e[c] = line[i]; continue }
            do { j = pool[rnd(np) + 1] } while (j >= i - 3 && j <= i + 3 || line[j] == line[i])   # from elsewhere
            e[c] = line[j]
        }
        printf "{\"ind\": %d, \"ctx\": \"%s\", \"endings\": [\"%s\", \"%s\", \"%s\", \"%s\"], \"label\": %d, \"source\": \"tinyshakespeare val line %d\"}\n", \
            k, ctx, esc(e[0]), esc(e[1]), esc(e[2]), esc(e[3]), label, i + 1
    }
}' > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out: $items items from the last 10% of $text"
