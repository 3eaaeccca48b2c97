// ----------------------------------------------------------------------------
// GPT-2 byte-level BPE: loading, encoding, decoding (docs/tokenizer.md)
//   encode = pre-tokenize (pretokenize.h) -> per piece:
//            1. one byte                  -> its token
//            2. the whole piece is a token -> that token (as tiktoken does)
//            3. in this thread's cache     -> the cached ids
//            4. else BPE: merge the lowest-rank adjacent pair, leftmost first,
//               until none is left; linked list of symbols + binary heap of
//               candidate pairs: O(n log n) for a piece of n bytes.
//   decode = concatenate the tokens' bytes.
// ----------------------------------------------------------------------------
#include "bpe.h"
#include "pretokenize.h"

#include <algorithm>
#include <cctype>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>

namespace bpe {

// ---- GPT-2's byte <-> unicode alphabet --------------------------------------
// Printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other
// 68 bytes are written as U+0100.. in increasing byte order. So ' ' is 'Ġ'.
namespace {

struct ByteAlphabet {
    int to_cp[256];          // byte -> code point
    int from_cp[0x144];      // code point -> byte, or -1
    unsigned char order[256];// GPT-2's id order of the single-byte tokens
    ByteAlphabet() {
        int n = 0, extra = 0;
        for (int b = 0; b < 256; b++) to_cp[b] = -1;
        for (int b = 0; b < 256; b++) {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            if (printable) { to_cp[b] = b; order[n++] = (unsigned char)b; }
        }
        for (int b = 0; b < 256; b++)
            if (to_cp[b] < 0) { to_cp[b] = 256 + extra++; order[n++] = (unsigned char)b; }
        for (int& c : from_cp) c = -1;
        for (int b = 0; b < 256; b++) from_cp[to_cp[b]] = b;
    }
};
const ByteAlphabet kAlphabet;

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) out += (char)cp;
    else if (cp < 0x800) { out += (char)(0xC0 | (cp >> 6)); out += (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        out += (char)(0xE0 | (cp >> 12)); out += (char)(0x80 | ((cp >> 6) & 0x3F));
        out += (char)(0x80 | (cp & 0x3F));
    } else {
        out += (char)(0xF0 | (cp >> 18)); out += (char)(0x80 | ((cp >> 12) & 0x3F));
        out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F));
    }
}

// bytes -> GPT-2 alphabet text (as written in encoder.json / vocab.bpe)
std::string to_alphabet(std::string_view bytes) {
    std::string out;
    for (unsigned char b : bytes) append_utf8(out, (uint32_t)kAlphabet.to_cp[b]);
    return out;
}

// GPT-2 alphabet text -> bytes; false if a character is outside the alphabet
// or the text is not valid UTF-8 (*bad gets the offending code point, or -1).
bool from_alphabet(std::string_view text, std::string& out, long* bad) {
    out.clear();
    const unsigned char* p = (const unsigned char*)text.data();
    const unsigned char* end = p + text.size();
    while (p < end) {
        uint32_t cp;
        if (*p < 0x80) { cp = *p++; }
        else if ((*p & 0xE0) == 0xC0 && end - p >= 2 && (p[1] & 0xC0) == 0x80) {
            cp = ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu); p += 2;
        } else {
            // anything longer than two bytes is above U+07FF: outside the alphabet
            int len; detail::char_at(p, end, &len);
            *bad = -1;
            if (len > 1) {                                    // valid: report the code point
                uint32_t c = *p & (len == 3 ? 0x0Fu : 0x07u);
                for (int k = 1; k < len; k++) c = (c << 6) | (p[k] & 0x3Fu);
                *bad = (long)c;
            }
            return false;
        }
        if (cp >= 0x144 || kAlphabet.from_cp[cp] < 0) { *bad = (long)cp; return false; }
        out += (char)kAlphabet.from_cp[cp];
    }
    return true;
}

std::string describe_cp(long cp) {
    if (cp < 0) return "a byte sequence that is not valid UTF-8";
    char buf[32];
    snprintf(buf, sizeof buf, "U+%04lX", cp);
    return buf;
}

// Printable excerpt of a key or line for error messages.
std::string excerpt(std::string_view s) {
    std::string out;
    for (unsigned char c : s.substr(0, 40)) {
        if (c >= 0x20 && c != 0x7F) out += (char)c;
        else { char buf[8]; snprintf(buf, sizeof buf, "\\x%02X", c); out += buf; }
    }
    if (s.size() > 40) out += "...";
    return out;
}

// ---- hashing ----------------------------------------------------------------
inline uint64_t mix64(uint64_t h) {
    h ^= h >> 31; h *= 0x94D049BB133111EBull; h ^= h >> 29;
    return h;
}
inline uint64_t hash_bytes(const char* p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t v; memcpy(&v, p, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ull; h ^= h >> 27;
        p += 8; n -= 8;
    }
    uint64_t v = 0; memcpy(&v, p, n);
    return mix64((h ^ v) * 0xBF58476D1CE4E5B9ull);
}

size_t pow2_at_least(size_t n) { size_t c = 16; while (c < n) c <<= 1; return c; }

std::atomic<uint64_t> g_next_serial{1};

} // namespace

int byte_to_unicode(unsigned char b) { return kAlphabet.to_cp[b]; }

// ---- the tokenizer's data ---------------------------------------------------
struct Tokenizer::Impl {
    uint64_t serial = g_next_serial++;       // tells per-thread caches whose entries they hold
    std::vector<std::string> tokens;         // (V) id -> bytes
    int byte_token[256];                     // byte -> id of its single-byte token
    // bytes -> id for every non-special token (open addressing). A slot holds the
    // first 16 bytes of its key inline (zero-padded), so the common short piece is
    // found without touching `tokens`; longer keys compare the rest there.
    struct PieceSlot { uint64_t w0, w1; uint32_t len; int id; };   // id -1 = empty
    std::vector<PieceSlot> piece_slots;
    // (left id, right id) -> rank and merged id (open addressing, key ~0 = empty)
    struct MergeSlot { uint64_t key; int rank; int merged; };
    std::vector<MergeSlot> merge_slots;
    int n_merges = 0;
    std::vector<std::pair<std::string, int>> specials;  // "<|...|>" tokens
    int eot = -1;

    struct PieceKey { uint64_t w0 = 0, w1 = 0, hash; };
    static PieceKey piece_key(std::string_view b) {
        PieceKey k;
        if (b.size() >= 16) { memcpy(&k.w0, b.data(), 8); memcpy(&k.w1, b.data() + 8, 8); }
        else if (b.size() > 8) { memcpy(&k.w0, b.data(), 8); memcpy(&k.w1, b.data() + 8, b.size() - 8); }
        else memcpy(&k.w0, b.data(), b.size());
        k.hash = b.size() <= 16 ? mix64((k.w0 * 0x9E3779B97F4A7C15ull) ^ (k.w1 * 0xC2B2AE3D27D4EB4Full) ^ b.size())
                                : hash_bytes(b.data(), b.size());
        return k;
    }
    int find_piece(std::string_view bytes) const {
        const PieceKey k = piece_key(bytes);
        size_t mask = piece_slots.size() - 1;
        for (size_t i = k.hash & mask;; i = (i + 1) & mask) {
            const PieceSlot& s = piece_slots[i];
            if (s.id < 0) return -1;
            if (s.len == bytes.size() && s.w0 == k.w0 && s.w1 == k.w1 &&
                (bytes.size() <= 16 || memcmp(tokens[s.id].data() + 16, bytes.data() + 16, bytes.size() - 16) == 0))
                return s.id;
        }
    }
    void insert_piece(int id) {
        const PieceKey k = piece_key(tokens[id]);
        size_t mask = piece_slots.size() - 1;
        size_t i = k.hash & mask;
        while (piece_slots[i].id >= 0) i = (i + 1) & mask;
        piece_slots[i] = {k.w0, k.w1, (uint32_t)tokens[id].size(), id};
    }
    static uint64_t pair_key(int a, int b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }
    const MergeSlot* find_merge(int a, int b) const {
        uint64_t key = pair_key(a, b);
        size_t mask = merge_slots.size() - 1;
        for (size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
            const MergeSlot& s = merge_slots[i];
            if (s.key == key) return &s;
            if (s.key == ~0ull) return nullptr;
        }
    }
    bool insert_merge(int a, int b, int rank, int merged) {   // false if already there
        uint64_t key = pair_key(a, b);
        size_t mask = merge_slots.size() - 1;
        size_t i = mix64(key) & mask;
        for (; merge_slots[i].key != ~0ull; i = (i + 1) & mask)
            if (merge_slots[i].key == key) return false;
        merge_slots[i] = {key, rank, merged};
        return true;
    }

    void bpe_merge(std::string_view piece, std::vector<int>& out) const;
    void encode_piece(std::string_view piece, std::vector<int>& out) const;
};

// ---- loading ------------------------------------------------------------------
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

} // namespace

std::string read_file(const std::string& path) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) fail(path + ": cannot open (" + strerror(errno) + ")");
    std::string data;
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
    bool err = ferror(f);
    fclose(f);
    if (err) fail(path + ": read error (" + strerror(errno) + ")");
    return data;
}

Tokenizer Tokenizer::load(const std::string& dir) {
    std::string enc_path = dir + "/encoder.json", bpe_path = dir + "/vocab.bpe";
    std::string enc, merges;
    try {
        enc = read_file(enc_path);
        merges = read_file(bpe_path);
    } catch (const std::runtime_error& e) {
        fail(std::string(e.what()) + "; a tokenizer directory needs encoder.json and vocab.bpe "
             "(GPT-2's are in ../shared/data/gpt2; pass --vocab DIR or set GPTCU_DATA)");
    }
    return from_strings(enc, merges, dir);
}

Tokenizer Tokenizer::from_strings(std::string_view encoder_json, std::string_view vocab_bpe,
                                  const std::string& where) {
    auto impl = std::make_unique<Impl>();
    const std::string enc_name = where + "/encoder.json", bpe_name = where + "/vocab.bpe";

    // encoder.json: {"token in alphabet": id, ...}, ids exactly 0..V-1
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(encoder_json.begin(), encoder_json.end());
    } catch (const nlohmann::json::exception& e) {
        fail(enc_name + ": not valid JSON (" + e.what() + "); is it a GPT-2 encoder.json?");
    }
    if (!j.is_object() || j.empty())
        fail(enc_name + ": expected a non-empty JSON object {\"token\": id, ...}, got " +
             std::string(j.type_name()) + "; is it a GPT-2 encoder.json?");
    const size_t V = j.size();
    if (V > (size_t)INT32_MAX / 2) fail(enc_name + ": too many entries");
    impl->tokens.assign(V, std::string());
    std::vector<char> seen(V, 0);
    std::string bytes;
    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& key = it.key();
        const nlohmann::json& v = it.value();
        if (!v.is_number_integer())
            fail(enc_name + ": the value of \"" + excerpt(key) + "\" is " + std::string(v.type_name()) +
                 ", expected an integer id");
        long long id = v.get<long long>();
        if (id < 0 || (size_t)id >= V)
            fail(enc_name + ": id " + std::to_string(id) + " of \"" + excerpt(key) + "\" is outside [0, " +
                 std::to_string(V) + "); ids must be 0..N-1 for N entries");
        if (seen[id])
            fail(enc_name + ": id " + std::to_string(id) + " is used twice (again by \"" + excerpt(key) + "\")");
        seen[id] = 1;
        long bad = -1;
        if (key.empty()) fail(enc_name + ": empty token string for id " + std::to_string(id));
        if (!from_alphabet(key, bytes, &bad))
            fail(enc_name + ": token \"" + excerpt(key) + "\" (id " + std::to_string(id) + ") contains " +
                 describe_cp(bad) + ", which is not in GPT-2's byte-to-unicode alphabet (U+0021..U+0143)");
        impl->tokens[id] = bytes;
    }

    // special tokens: "<|name|>"; all others go into the piece table
    impl->piece_slots.assign(pow2_at_least(2 * V), Impl::PieceSlot{0, 0, 0, -1});
    for (size_t id = 0; id < V; id++) {
        const std::string& t = impl->tokens[id];
        // "<|name|>" with name in [A-Za-z0-9_]+: pre-tokenization never yields
        // such a piece (letters and punctuation are split apart), so it can only
        // be a special token
        bool special = t.size() > 4 && t.compare(0, 2, "<|") == 0 && t.compare(t.size() - 2, 2, "|>") == 0 &&
            std::all_of(t.begin() + 2, t.end() - 2, [](char c) { return isalnum((unsigned char)c) || c == '_'; });
        if (special) {
            impl->specials.emplace_back(t, (int)id);
            if (t == "<|endoftext|>") impl->eot = (int)id;
        } else {
            if (impl->find_piece(t) >= 0)
                fail(enc_name + ": token \"" + excerpt(to_alphabet(t)) + "\" appears twice");
            impl->insert_piece((int)id);
        }
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int id = impl->find_piece(std::string_view(&c, 1));
        if (id < 0) {
            char buf[96];
            snprintf(buf, sizeof buf, ": byte 0x%02X (written \"", b);
            fail(enc_name + buf + to_alphabet(std::string_view(&c, 1)) +
                 "\") has no token; every byte needs one so that any text can be encoded");
        }
        impl->byte_token[b] = id;
    }

    // vocab.bpe: "#version: 0.2" then one "left right" merge per line, rank = order
    std::vector<std::pair<std::string_view, int>> lines;      // (line, 1-based line number)
    size_t pos = 0;
    int lineno = 0;
    while (pos < vocab_bpe.size()) {
        size_t nl = vocab_bpe.find('\n', pos);
        if (nl == std::string_view::npos) nl = vocab_bpe.size();
        std::string_view line = vocab_bpe.substr(pos, nl - pos);
        lineno++;
        pos = nl + 1;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty()) continue;
        if (lineno == 1 && line[0] == '#') continue;          // "#version: 0.2"
        lines.emplace_back(line, lineno);
    }
    impl->merge_slots.assign(pow2_at_least(2 * lines.size() + 2), Impl::MergeSlot{~0ull, 0, 0});
    std::string left, right;
    for (size_t rank = 0; rank < lines.size(); rank++) {
        auto [line, ln] = lines[rank];
        const std::string at = bpe_name + " line " + std::to_string(ln) + " (\"" + excerpt(line) + "\")";
        size_t sp = line.find(' ');
        if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size() ||
            line.find(' ', sp + 1) != std::string_view::npos)
            fail(at + ": expected two tokens separated by one space; is it a GPT-2 vocab.bpe?");
        long bad = -1;
        if (!from_alphabet(line.substr(0, sp), left, &bad) || !from_alphabet(line.substr(sp + 1), right, &bad))
            fail(at + ": contains " + describe_cp(bad) + ", which is not in GPT-2's byte-to-unicode alphabet");
        int a = impl->find_piece(left), b = impl->find_piece(right);
        int m = impl->find_piece(left + right);
        if (a < 0 || b < 0 || m < 0)
            fail(at + ": token \"" + excerpt(to_alphabet(a < 0 ? left : b < 0 ? right : left + right)) +
                 "\" is not in encoder.json; do encoder.json and vocab.bpe come from the same tokenizer?");
        if (!impl->insert_merge(a, b, (int)rank, m))
            fail(at + ": this merge was already listed on an earlier line");
    }
    impl->n_merges = (int)lines.size();
    return Tokenizer(std::move(impl));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

int Tokenizer::vocab_size() const { return (int)impl_->tokens.size(); }
int Tokenizer::eot_id() const { return impl_->eot; }
int Tokenizer::n_merges() const { return impl_->n_merges; }

// ---- encoding -----------------------------------------------------------------
namespace {

// Per-thread cache: piece bytes -> ids, for pieces that needed BPE. Cleared when
// full or when used with another Tokenizer (serial numbers differ).
struct PieceCache {
    struct Slot { uint64_t hash; uint32_t key_off, key_len, ids_off, ids_len; };  // key_len 0 = empty
    static constexpr size_t kSlots = 1 << 15;
    static constexpr size_t kMaxPiece = 256;                  // longer pieces are not cached
    uint64_t owner = 0;
    size_t used = 0;
    std::vector<Slot> slots;
    std::string keys;
    std::vector<int> ids;

    void reset(uint64_t serial) {
        owner = serial; used = 0;
        slots.assign(kSlots, Slot{0, 0, 0, 0, 0});
        keys.clear(); ids.clear();
    }
    Slot* find(std::string_view piece, uint64_t h) {
        for (size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
            Slot& s = slots[i];
            if (s.key_len == 0) return &s;
            if (s.hash == h && s.key_len == piece.size() &&
                memcmp(keys.data() + s.key_off, piece.data(), piece.size()) == 0) return &s;
        }
    }
};
thread_local PieceCache t_cache;

// Scratch space for one piece's merge, reused across calls.
struct MergeScratch {
    struct Cand { int rank, pos, left, right, merged; };
    std::vector<int> id, next, prev;
    std::vector<Cand> heap;
};
thread_local MergeScratch t_scratch;

// min-heap on (rank, pos): lowest rank first, leftmost first among equal ranks
struct CandAfter {
    bool operator()(const MergeScratch::Cand& x, const MergeScratch::Cand& y) const {
        return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
    }
};

} // namespace

// BPE on one piece of n >= 2 bytes. Symbols form a doubly linked list over
// byte positions (a merged symbol lives at the position of its left part);
// every adjacent pair that has a merge rule sits in the heap. Pop the best
// pair, skip it if either side changed since it was pushed, merge, push the
// (at most two) new pairs with the neighbours. Each merge removes a symbol, so
// at most n-1 merges and 2n pushes: O(n log n).
void Tokenizer::Impl::bpe_merge(std::string_view piece, std::vector<int>& out) const {
    const int n = (int)piece.size();
    MergeScratch& s = t_scratch;
    s.id.resize(n); s.next.resize(n); s.prev.resize(n);
    s.heap.clear();
    for (int i = 0; i < n; i++) {
        s.id[i] = byte_token[(unsigned char)piece[i]];
        s.next[i] = i + 1;                                  // n = end of list
        s.prev[i] = i - 1;                                  // -1 = start of list
    }
    auto push_pair = [&](int pos) {
        if (pos < 0) return;                                // no left neighbour
        int right = s.next[pos];
        if (right >= n) return;
        const MergeSlot* m = find_merge(s.id[pos], s.id[right]);
        if (!m) return;
        s.heap.push_back({m->rank, pos, s.id[pos], s.id[right], m->merged});
        std::push_heap(s.heap.begin(), s.heap.end(), CandAfter{});
    };
    for (int i = 0; i + 1 < n; i++) {
        const MergeSlot* m = find_merge(s.id[i], s.id[i + 1]);
        if (m) s.heap.push_back({m->rank, i, s.id[i], s.id[i + 1], m->merged});
    }
    std::make_heap(s.heap.begin(), s.heap.end(), CandAfter{});
    while (!s.heap.empty()) {
        std::pop_heap(s.heap.begin(), s.heap.end(), CandAfter{});
        MergeScratch::Cand c = s.heap.back();
        s.heap.pop_back();
        int right = s.next[c.pos];
        // stale? (a symbol's id only ever grows into a longer token, so equal ids
        // at both ends mean the pair is still there)
        if (s.id[c.pos] != c.left || right >= n || s.id[right] != c.right) continue;
        s.id[c.pos] = c.merged;
        s.id[right] = -1;
        s.next[c.pos] = s.next[right];
        if (s.next[right] < n) s.prev[s.next[right]] = c.pos;
        push_pair(s.prev[c.pos]);
        push_pair(c.pos);
    }
    for (int i = 0; i < n; i = s.next[i]) out.push_back(s.id[i]);
}

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int>& out) const {
    if (piece.size() == 1) { out.push_back(byte_token[(unsigned char)piece[0]]); return; }
    int whole = find_piece(piece);
    if (whole >= 0) { out.push_back(whole); return; }
    if (piece.size() > PieceCache::kMaxPiece) { bpe_merge(piece, out); return; }
    PieceCache& cache = t_cache;
    if (cache.owner != serial || cache.used * 2 > PieceCache::kSlots || cache.keys.size() > (8u << 20))
        cache.reset(serial);
    uint64_t h = hash_bytes(piece.data(), piece.size());
    PieceCache::Slot* slot = cache.find(piece, h);
    if (slot->key_len != 0) {
        out.insert(out.end(), cache.ids.begin() + slot->ids_off, cache.ids.begin() + slot->ids_off + slot->ids_len);
        return;
    }
    size_t start = out.size();
    bpe_merge(piece, out);
    *slot = {h, (uint32_t)cache.keys.size(), (uint32_t)piece.size(), (uint32_t)cache.ids.size(),
             (uint32_t)(out.size() - start)};
    cache.keys.append(piece);
    cache.ids.insert(cache.ids.end(), out.begin() + start, out.end());
    cache.used++;
}

void Tokenizer::encode_piece(std::string_view piece, std::vector<int>& out) const {
    if (!piece.empty()) impl_->encode_piece(piece, out);
}

std::vector<std::string_view> pretokenize(std::string_view text) {
    std::vector<std::string_view> pieces;
    detail::for_each_piece(text, [&](std::string_view p) { pieces.push_back(p); });
    return pieces;
}

std::vector<int> Tokenizer::encode_ordinary(std::string_view text) const {
    std::vector<int> out;
    out.reserve(text.size() / 3 + 16);
    const Impl& im = *impl_;
    detail::for_each_piece(text, [&](std::string_view p) { im.encode_piece(p, out); });
    return out;
}

std::vector<int> Tokenizer::encode(std::string_view text) const {
    std::vector<int> out;
    const Impl& im = *impl_;
    size_t pos = 0;
    while (pos < text.size()) {
        // earliest special token at or after pos (longest first on a tie)
        size_t best = std::string_view::npos, best_len = 0;
        int best_id = -1;
        for (const auto& [s, id] : im.specials) {
            size_t at = text.find(s, pos);
            if (at < best || (at == best && s.size() > best_len)) { best = at; best_len = s.size(); best_id = id; }
        }
        std::string_view chunk = text.substr(pos, best == std::string_view::npos ? std::string_view::npos : best - pos);
        detail::for_each_piece(chunk, [&](std::string_view p) { im.encode_piece(p, out); });
        if (best == std::string_view::npos) break;
        out.push_back(best_id);
        pos = best + best_len;
    }
    return out;
}

size_t Tokenizer::safe_cut(std::string_view text, size_t at) {
    // The letter's piece (a run of letters, or a contraction) ends at the space,
    // which is not a letter; " x..." then starts a new piece (rule 2). The scanner
    // restarts at each piece's end, so what follows cannot depend on what came before.
    auto is_alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    for (size_t k = std::max<size_t>(at, 1); k + 1 < text.size(); k++)
        if (text[k] == ' ' && is_alpha(text[k - 1]) && is_alpha(text[k + 1])) return k;
    return text.size();
}

std::vector<int> Tokenizer::encode_ordinary_parallel(std::string_view text, int n_threads) const {
    if (n_threads <= 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
    constexpr size_t kMinChunk = 1 << 16;
    n_threads = (int)std::min<size_t>((size_t)n_threads, text.size() / kMinChunk + 1);
    if (n_threads <= 1) return encode_ordinary(text);
    std::vector<size_t> cuts{0};
    for (int t = 1; t < n_threads; t++) {
        size_t k = safe_cut(text, std::max(cuts.back() + 1, text.size() * (size_t)t / (size_t)n_threads));
        if (k >= text.size()) break;
        cuts.push_back(k);
    }
    cuts.push_back(text.size());
    std::vector<std::vector<int>> parts(cuts.size() - 1);
    std::vector<std::thread> threads;
    for (size_t t = 1; t < parts.size(); t++)
        threads.emplace_back([&, t] { parts[t] = encode_ordinary(text.substr(cuts[t], cuts[t + 1] - cuts[t])); });
    parts[0] = encode_ordinary(text.substr(0, cuts[1]));
    for (auto& th : threads) th.join();
    size_t total = 0;
    for (auto& p : parts) total += p.size();
    std::vector<int> out;
    out.reserve(total);
    for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

// ---- decoding -----------------------------------------------------------------
std::string_view Tokenizer::token_bytes(int id) const {
    if (id < 0 || id >= vocab_size())
        fail("token id " + std::to_string(id) + " is out of range: this vocabulary has ids 0.." +
             std::to_string(vocab_size() - 1) + "; were the ids made with another tokenizer?");
    return impl_->tokens[id];
}

std::string Tokenizer::decode(std::span<const int> ids) const {
    size_t bytes = 0;                                       // pass 1: check ids, size the output
    for (size_t i = 0; i < ids.size(); i++) {
        int id = ids[i];
        if (id < 0 || id >= vocab_size())
            fail("decode: id " + std::to_string(id) + " at position " + std::to_string(i) +
                 " is out of range: this vocabulary has ids 0.." + std::to_string(vocab_size() - 1) +
                 "; were the ids made with another tokenizer?");
        bytes += impl_->tokens[id].size();
    }
    std::string out(bytes, '\0');                           // pass 2: copy
    char* p = out.data();
    for (int id : ids) {
        const std::string& t = impl_->tokens[id];
        memcpy(p, t.data(), t.size());
        p += t.size();
    }
    return out;
}

std::string StreamDecoder::push(int id) {
    pending_ += tok_->token_bytes(id);
    static const char kReplacement[] = "\xEF\xBF\xBD";         // U+FFFD
    std::string out;
    const unsigned char* p = (const unsigned char*)pending_.data();
    size_t n = pending_.size(), i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) { out += (char)c; i++; continue; }
        int need = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        if (need == 0) { out += kReplacement; i++; continue; }
        int k = 1;
        for (; k < need && i + k < n; k++) {
            unsigned char d = p[i + k];
            unsigned char lo = 0x80, hi = 0xBF;                  // allowed range of this byte
            if (k == 1) {
                if (c == 0xE0) lo = 0xA0;
                else if (c == 0xED) hi = 0x9F;
                else if (c == 0xF0) lo = 0x90;
                else if (c == 0xF4) hi = 0x8F;
            }
            if (d < lo || d > hi) break;
        }
        if (k == need) { out.append(pending_, i, need); i += need; continue; }
        if (i + k == n) break;                                  // incomplete: wait for more bytes
        out += kReplacement;                                    // invalid: replace what we have
        i += k;
    }
    pending_.erase(0, i);
    return out;
}

std::string StreamDecoder::flush() {
    std::string out = pending_.empty() ? "" : "\xEF\xBF\xBD";
    pending_.clear();
    return out;
}

} // namespace bpe
