// ----------------------------------------------------------------------------
// BPE training (docs/tokenizer.md, "Training")
//   1. pre-tokenize every text with GPT-2's pattern; count each distinct piece
//      ("word"). Merges never cross piece boundaries, so a word is trained once,
//      weighted by its count.
//   2. count every adjacent symbol pair, weighted: count(a,b) = sum over words of
//      (word count) x (occurrences of a,b in the word). Keep, per pair, the list
//      of words it occurs in.
//   3. repeat until the vocabulary is full: pop the most frequent pair from a
//      max-heap (lazy: an entry whose count is out of date is skipped), give it
//      a new id, rewrite only the words that contain it, and apply the count
//      changes those words cause (old pairs of the word out, new pairs in).
//   tie-breaking: equal counts -> smaller (left id, right id) first; ids are
//   given in creation order, so older tokens win. Words are numbered in sorted
//   order. Nothing depends on hash-table order: the same texts and size give
//   the same vocabulary on every machine.
//   cost: step 1-2 O(bytes); each merge O(total length of the words it touches
//   + changed pairs x log heap), never a recount of the whole corpus.
// ----------------------------------------------------------------------------
#include "bpe.h"
#include "pretokenize.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <unordered_map>

#include <nlohmann/json.hpp>

namespace bpe {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

inline uint64_t pair_key(int a, int b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

struct HeapEntry {
    int64_t count;
    int a, b;
};
// std heap is a max-heap on "less": x is below y if it has a smaller count, or
// the same count and a larger (a, b)
struct HeapLess {
    bool operator()(const HeapEntry& x, const HeapEntry& y) const {
        if (x.count != y.count) return x.count < y.count;
        if (x.a != y.a) return x.a > y.a;
        return x.b > y.b;
    }
};

struct SplitMix {                                  // hash for 64-bit pair keys
    size_t operator()(uint64_t x) const {
        x += 0x9E3779B97F4A7C15ull;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        return (size_t)(x ^ (x >> 31));
    }
};

} // namespace

TrainedVocab train_bpe(const std::vector<std::string_view>& texts, int vocab_size,
                       const std::function<void(const std::string&)>& progress) {
    if (vocab_size < 257)
        fail("train: vocab size " + std::to_string(vocab_size) +
             " is too small: it needs 256 byte tokens + <|endoftext|> + at least 0 merges (>= 257)");
    auto t0 = std::chrono::steady_clock::now();
    auto say = [&](const std::string& s) { if (progress) progress(s); };

    // 1. word counts
    std::unordered_map<std::string_view, int64_t> counts;
    size_t total_bytes = 0;
    for (std::string_view text : texts) {
        total_bytes += text.size();
        detail::for_each_piece(text, [&](std::string_view p) { counts[p]++; });
    }
    std::vector<std::pair<std::string_view, int64_t>> sorted(counts.begin(), counts.end());
    std::sort(sorted.begin(), sorted.end());
    counts.clear();

    TrainedVocab v;
    int byte_id[256];
    // ids 0..255: the bytes in order of their code point in GPT-2's alphabet;
    // that is GPT-2's own id order (printable bytes first), so they match GPT-2's
    {
        std::vector<std::pair<int, int>> by_cp;       // (code point, byte)
        for (int c = 0; c < 256; c++) by_cp.emplace_back(byte_to_unicode((unsigned char)c), c);
        std::sort(by_cp.begin(), by_cp.end());
        for (int id = 0; id < 256; id++) {
            byte_id[by_cp[id].second] = id;
            v.tokens.emplace_back(1, (char)by_cp[id].second);
        }
    }

    struct Word { std::vector<int> sym; int64_t count; };
    std::vector<Word> words(sorted.size());
    for (size_t w = 0; w < sorted.size(); w++) {
        words[w].count = sorted[w].second;
        for (unsigned char c : sorted[w].first) words[w].sym.push_back(byte_id[c]);
    }
    say("train: " + std::to_string(total_bytes) + " bytes, " + std::to_string(words.size()) + " distinct words");

    // 2. pair counts and where each pair occurs
    std::unordered_map<uint64_t, int64_t, SplitMix> pair_count;
    std::unordered_map<uint64_t, std::vector<int>, SplitMix> where;
    for (size_t w = 0; w < words.size(); w++) {
        const std::vector<int>& s = words[w].sym;
        for (size_t i = 0; i + 1 < s.size(); i++) {
            uint64_t k = pair_key(s[i], s[i + 1]);
            pair_count[k] += words[w].count;
            std::vector<int>& list = where[k];
            if (list.empty() || list.back() != (int)w) list.push_back((int)w);
        }
    }
    std::vector<HeapEntry> heap;
    heap.reserve(pair_count.size());
    for (auto& [k, c] : pair_count) heap.push_back({c, (int)(k >> 32), (int)(uint32_t)k});
    std::make_heap(heap.begin(), heap.end(), HeapLess{});

    // 3. merge loop
    const int n_merges_wanted = vocab_size - 257;
    std::vector<uint32_t> stamp(words.size(), 0);      // last merge that rewrote word w
    std::vector<std::pair<uint64_t, int64_t>> delta;   // pair count changes of one merge
    std::vector<int> rewritten;
    while ((int)v.merges.size() < n_merges_wanted && !heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), HeapLess{});
        HeapEntry top = heap.back();
        heap.pop_back();
        uint64_t key = pair_key(top.a, top.b);
        auto it = pair_count.find(key);
        if (it == pair_count.end() || it->second != top.count) continue;   // out of date
        const int nid = (int)v.tokens.size();
        v.tokens.push_back(v.tokens[top.a] + v.tokens[top.b]);
        v.merges.emplace_back(top.a, top.b);
        const uint32_t merge_no = (uint32_t)v.merges.size();

        delta.clear();
        std::vector<int> occurs = std::move(where[key]);
        where.erase(key);
        for (int w : occurs) {
            if (stamp[w] == merge_no) continue;
            stamp[w] = merge_no;
            Word& word = words[w];
            const std::vector<int>& s = word.sym;
            rewritten.clear();
            for (size_t i = 0; i < s.size();) {
                if (i + 1 < s.size() && s[i] == top.a && s[i + 1] == top.b) { rewritten.push_back(nid); i += 2; }
                else rewritten.push_back(s[i++]);
            }
            if (rewritten.size() == s.size()) continue;       // pair no longer in this word
            for (size_t i = 0; i + 1 < s.size(); i++) delta.emplace_back(pair_key(s[i], s[i + 1]), -word.count);
            for (size_t i = 0; i + 1 < rewritten.size(); i++) {
                uint64_t k = pair_key(rewritten[i], rewritten[i + 1]);
                delta.emplace_back(k, word.count);
                if (rewritten[i] == nid || rewritten[i + 1] == nid) {
                    std::vector<int>& list = where[k];
                    if (list.empty() || list.back() != w) list.push_back(w);
                }
            }
            word.sym.swap(rewritten);
        }
        // apply the changes, one heap entry per pair whose count changed
        std::sort(delta.begin(), delta.end());
        for (size_t i = 0; i < delta.size();) {
            uint64_t k = delta[i].first;
            int64_t d = 0;
            for (; i < delta.size() && delta[i].first == k; i++) d += delta[i].second;
            if (d == 0) continue;
            int64_t c = (pair_count[k] += d);
            if (c <= 0) { pair_count.erase(k); continue; }
            heap.push_back({c, (int)(k >> 32), (int)(uint32_t)k});
            std::push_heap(heap.begin(), heap.end(), HeapLess{});
        }
        pair_count.erase(key);
        if (merge_no % 1000 == 0)
            say("train: " + std::to_string(merge_no) + "/" + std::to_string(n_merges_wanted) + " merges");
    }
    if ((int)v.merges.size() < n_merges_wanted)
        say("train: the text has no pairs left after " + std::to_string(v.merges.size()) +
            " merges; the vocabulary has " + std::to_string(v.tokens.size() + 1) + " tokens, not " +
            std::to_string(vocab_size));
    v.eot_id = (int)v.tokens.size();
    v.tokens.emplace_back("<|endoftext|>");
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char buf[128];
    snprintf(buf, sizeof buf, "train: %zu tokens (%zu merges) in %.2f s", v.tokens.size(), v.merges.size(), secs);
    say(buf);
    return v;
}

// ---- writing encoder.json / vocab.bpe ------------------------------------------
namespace {

std::string alphabet(std::string_view bytes) {
    std::string out;
    for (unsigned char b : bytes) {
        uint32_t cp = (uint32_t)byte_to_unicode(b);
        if (cp < 0x80) out += (char)cp;
        else { out += (char)(0xC0 | (cp >> 6)); out += (char)(0x80 | (cp & 0x3F)); }   // all cp < 0x800
    }
    return out;
}

void write_text(const std::string& path, const std::string& text) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) fail("save_vocab: cannot create " + path + " (" + strerror(errno) + ")");
    bool ok = fwrite(text.data(), 1, text.size(), f) == text.size();
    ok = (fclose(f) == 0) && ok;
    if (!ok) fail("save_vocab: write to " + path + " failed (" + strerror(errno) + "); is the disk full?");
}

} // namespace

void save_vocab(const TrainedVocab& v, const std::string& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) fail("save_vocab: cannot create directory " + dir + " (" + ec.message() + ")");
    nlohmann::ordered_json enc = nlohmann::ordered_json::object();
    for (size_t id = 0; id < v.tokens.size(); id++) {
        std::string key = (int)id == v.eot_id ? v.tokens[id] : alphabet(v.tokens[id]);
        enc[key] = id;
    }
    write_text(dir + "/encoder.json", enc.dump(-1, ' ', /*ensure_ascii=*/true));
    std::string merges = "#version: 0.2\n";
    for (auto [a, b] : v.merges) merges += alphabet(v.tokens[a]) + " " + alphabet(v.tokens[b]) + "\n";
    write_text(dir + "/vocab.bpe", merges);
}

} // namespace bpe
