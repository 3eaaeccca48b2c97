// ----------------------------------------------------------------------------
// tok — the tokenizer's command-line tool (tokenizer/bpe.h has the library)
//   tok encode [FILE] [--allow-special] [--vocab DIR] [--threads N]
//   tok decode [FILE] [--vocab DIR]
//   tok train --vocab-size N --out DIR FILE...
//   tok prepare --val-fraction F --out DIR FILE... [--vocab DIR] [--shard-tokens N] [--threads N]
// Errors go to stderr as "tok: <what is wrong and what to do>", exit status 1
// (2 for a bad command line).
// ----------------------------------------------------------------------------
#include "bpe.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

const char* kUsage = R"(tok — GPT-2 byte-level BPE tokenizer (gpt.cu)

usage:
  tok encode [FILE] [--allow-special] [--vocab DIR] [--threads N]
      text (FILE, or stdin) -> token ids, decimal, separated by spaces, on stdout.
      --allow-special   <|endoftext|> in the text becomes its id (50256 for GPT-2);
                        without it, it is ordinary text.
  tok decode [FILE] [--vocab DIR]
      token ids (whitespace-separated decimals; FILE or stdin) -> the exact text.
  tok train --vocab-size N --out DIR FILE...
      learn a byte-level BPE vocabulary of N tokens (256 bytes + merges +
      <|endoftext|>) from the files; writes DIR/encoder.json and DIR/vocab.bpe.
  tok prepare --val-fraction F --out DIR FILE... [--vocab DIR] [--shard-tokens N] [--threads N]
      tokenize each file; its first (1-F) of bytes go to DIR/train_000.bin ..., the
      rest to DIR/val_000.bin ... (llm.c .bin shards, at most N tokens each,
      default 100000000). Files are separated by <|endoftext|>.
  tok --help

  --vocab DIR     directory with encoder.json and vocab.bpe
                  (default: $GPTCU_DATA/gpt2, GPTCU_DATA defaulting to ../shared/data)
  --threads N     encoding threads (default: all cores)
)";

struct UsageError : std::runtime_error { using std::runtime_error::runtime_error; };

std::string default_vocab_dir() {
    const char* d = getenv("GPTCU_DATA");
    return std::string(d && *d ? d : "../shared/data") + "/gpt2";
}

// Command-line options of one subcommand: positional arguments and --flags.
struct Args {
    std::vector<std::string> positional;
    std::vector<std::pair<std::string, std::string>> flags;   // (name, value) in order

    bool has(const std::string& name) const {
        for (auto& f : flags) if (f.first == name) return true;
        return false;
    }
    std::string get(const std::string& name, const std::string& fallback) const {
        std::string v = fallback;
        for (auto& f : flags) if (f.first == name) v = f.second;
        return v;
    }
};

// Parses argv[first..]; value_flags take a value ("--x V" or "--x=V"), bool_flags none.
Args parse(int argc, char** argv, int first, const std::vector<std::string>& value_flags,
           const std::vector<std::string>& bool_flags, const std::string& cmd) {
    Args a;
    for (int i = first; i < argc; i++) {
        std::string s = argv[i];
        if (s.size() > 2 && s.compare(0, 2, "--") == 0) {
            std::string name = s, value;
            size_t eq = s.find('=');
            if (eq != std::string::npos) { name = s.substr(0, eq); value = s.substr(eq + 1); }
            bool takes_value = std::find(value_flags.begin(), value_flags.end(), name) != value_flags.end();
            bool is_bool = std::find(bool_flags.begin(), bool_flags.end(), name) != bool_flags.end();
            if (!takes_value && !is_bool) throw UsageError("tok " + cmd + ": unknown option " + name);
            if (takes_value && eq == std::string::npos) {
                if (i + 1 >= argc) throw UsageError("tok " + cmd + ": option " + name + " needs a value");
                value = argv[++i];
            }
            if (is_bool && eq != std::string::npos)
                throw UsageError("tok " + cmd + ": option " + name + " takes no value");
            a.flags.emplace_back(name, value);
        } else if (s == "-") {
            a.positional.push_back(s);
        } else if (s.size() > 1 && s[0] == '-') {
            throw UsageError("tok " + cmd + ": unknown option " + s);
        } else {
            a.positional.push_back(s);
        }
    }
    return a;
}

long long parse_int(const std::string& s, const std::string& what, long long lo, long long hi) {
    char* end = nullptr;
    errno = 0;
    long long v = strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0 || v < lo || v > hi)
        throw UsageError(what + " '" + s + "' must be an integer in [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "]");
    return v;
}

std::string read_input(const std::vector<std::string>& positional, const std::string& cmd) {
    if (positional.size() > 1) throw UsageError("tok " + cmd + ": takes at most one FILE, got " +
                                                std::to_string(positional.size()));
    std::string data, name;
    if (positional.empty() || positional[0] == "-") {
        name = "stdin";
        char buf[1 << 16];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) data.append(buf, n);
    } else {
        name = positional[0];
        data = bpe::read_file(name);
    }
    if (data.empty()) throw std::runtime_error(cmd + ": " + name + " is empty; nothing to " + cmd);
    return data;
}

void write_all(const std::string& s) {
    if (fwrite(s.data(), 1, s.size(), stdout) != s.size())
        throw std::runtime_error("cannot write to stdout (" + std::string(strerror(errno)) + ")");
}

int cmd_encode(int argc, char** argv) {
    Args a = parse(argc, argv, 2, {"--vocab", "--threads"}, {"--allow-special"}, "encode");
    int threads = (int)parse_int(a.get("--threads", "0"), "--threads", 0, 1024);
    bpe::Tokenizer tok = bpe::Tokenizer::load(a.get("--vocab", default_vocab_dir()));
    std::string text = read_input(a.positional, "encode");
    std::vector<int> ids = a.has("--allow-special") ? tok.encode(text) : tok.encode_ordinary_parallel(text, threads);
    std::string out;
    out.reserve(ids.size() * 6 + 1);
    char buf[16];
    for (size_t i = 0; i < ids.size(); i++) {
        int n = snprintf(buf, sizeof buf, i ? " %d" : "%d", ids[i]);
        out.append(buf, (size_t)n);
    }
    out += '\n';
    write_all(out);
    return 0;
}

int cmd_decode(int argc, char** argv) {
    Args a = parse(argc, argv, 2, {"--vocab"}, {}, "decode");
    bpe::Tokenizer tok = bpe::Tokenizer::load(a.get("--vocab", default_vocab_dir()));
    std::string text = read_input(a.positional, "decode");
    std::vector<int> ids;
    const char* p = text.data();
    const char* end = p + text.size();
    while (p < end) {
        if (isspace((unsigned char)*p)) { p++; continue; }
        const char* start = p;
        long long v = 0;
        bool digits = true;
        while (p < end && !isspace((unsigned char)*p)) {
            if (*p < '0' || *p > '9') digits = false;
            else if (v <= INT32_MAX) v = v * 10 + (*p - '0');
            p++;
        }
        std::string word(start, (size_t)std::min<ptrdiff_t>(p - start, 40));
        if (!digits)
            throw std::runtime_error("decode: '" + word + "' at byte " + std::to_string(start - text.data()) +
                                     " is not a token id; expected decimal integers separated by whitespace");
        if (v >= tok.vocab_size())
            throw std::runtime_error("decode: id " + word + " (token " + std::to_string(ids.size()) +
                                     ") is out of range: this vocabulary has ids 0.." +
                                     std::to_string(tok.vocab_size() - 1) +
                                     "; were the ids made with another tokenizer (--vocab DIR)?");
        ids.push_back((int)v);
    }
    if (ids.empty()) throw std::runtime_error("decode: the input has no token ids (only whitespace)");
    write_all(tok.decode(ids));
    return 0;
}

int cmd_train(int argc, char** argv) {
    Args a = parse(argc, argv, 2, {"--vocab-size", "--out"}, {}, "train");
    if (!a.has("--vocab-size")) throw UsageError("tok train: --vocab-size N is required");
    if (!a.has("--out")) throw UsageError("tok train: --out DIR is required");
    if (a.positional.empty()) throw UsageError("tok train: give at least one text FILE to learn from");
    int vocab_size = (int)parse_int(a.get("--vocab-size", ""), "--vocab-size", 257, 1 << 24);
    std::string out = a.get("--out", "");
    std::vector<std::string> data;
    for (auto& f : a.positional) {
        data.push_back(bpe::read_file(f));
        if (data.back().empty()) throw std::runtime_error("train: " + f + " is empty; nothing to learn from");
    }
    std::vector<std::string_view> texts(data.begin(), data.end());
    bpe::TrainedVocab v = bpe::train_bpe(texts, vocab_size,
        [](const std::string& line) { fprintf(stderr, "%s\n", line.c_str()); });
    bpe::save_vocab(v, out);
    bpe::Tokenizer check = bpe::Tokenizer::load(out);           // the files must load back
    fprintf(stderr, "wrote %s/encoder.json and %s/vocab.bpe (%d tokens, %d merges)\n", out.c_str(), out.c_str(),
            check.vocab_size(), check.n_merges());
    return 0;
}

// Collects one split's tokens and writes DIR/<name>_NNN.bin shards.
struct ShardWriter {
    std::string dir, name;
    size_t shard_tokens;
    int vocab_size;
    std::vector<int> buf;
    int n_shards = 0;
    size_t total = 0;

    void flush_full() {
        while (buf.size() >= shard_tokens) {
            write(std::span<const int>(buf.data(), shard_tokens));
            buf.erase(buf.begin(), buf.begin() + (ptrdiff_t)shard_tokens);
        }
    }
    void add(const std::vector<int>& ids) {
        buf.insert(buf.end(), ids.begin(), ids.end());
        total += ids.size();
        flush_full();
    }
    void write(std::span<const int> ids) {
        char file[64];
        snprintf(file, sizeof file, "/%s_%03d.bin", name.c_str(), n_shards++);
        bpe::write_shard(dir + file, ids, vocab_size);
    }
    void finish() { if (!buf.empty()) { write(buf); buf.clear(); } }
};

int cmd_prepare(int argc, char** argv) {
    Args a = parse(argc, argv, 2, {"--val-fraction", "--out", "--vocab", "--shard-tokens", "--threads"}, {}, "prepare");
    if (!a.has("--val-fraction")) throw UsageError("tok prepare: --val-fraction F is required (e.g. 0.1)");
    if (!a.has("--out")) throw UsageError("tok prepare: --out DIR is required");
    if (a.positional.empty()) throw UsageError("tok prepare: give at least one text FILE");
    std::string fs = a.get("--val-fraction", "");
    char* end = nullptr;
    double frac = strtod(fs.c_str(), &end);
    if (fs.empty() || *end != '\0' || !(frac >= 0.0 && frac < 1.0))
        throw UsageError("tok prepare: --val-fraction '" + fs + "' must be a number in [0, 1)");
    size_t shard_tokens = (size_t)parse_int(a.get("--shard-tokens", "100000000"), "--shard-tokens", 1, INT32_MAX);
    int threads = (int)parse_int(a.get("--threads", "0"), "--threads", 0, 1024);
    std::string out = a.get("--out", "");
    bpe::Tokenizer tok = bpe::Tokenizer::load(a.get("--vocab", default_vocab_dir()));
    std::error_code ec;
    std::filesystem::create_directories(out, ec);
    if (ec) throw std::runtime_error("prepare: cannot create directory " + out + " (" + ec.message() + ")");

    // total size, for the progress line
    size_t total_bytes = 0;
    for (auto& f : a.positional) {
        auto sz = std::filesystem::file_size(f, ec);
        if (ec) throw std::runtime_error("prepare: " + f + ": " + ec.message());
        if (sz == 0) throw std::runtime_error("prepare: " + f + " is empty; nothing to tokenize");
        total_bytes += sz;
    }
    const bool show_progress = total_bytes >= (4u << 20);
    ShardWriter train{out, "train", shard_tokens, tok.vocab_size(), {}, 0, 0};
    ShardWriter val{out, "val", shard_tokens, tok.vocab_size(), {}, 0, 0};
    size_t done_bytes = 0;
    auto t0 = std::chrono::steady_clock::now();
    // one line, rewritten in place ("\r") after every block, ended at the end
    auto progress = [&](bool final) {
        if (!show_progress) return;
        if (final) { fputc('\n', stderr); return; }
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        fprintf(stderr, "\rprepare: %.1f / %.1f MB (%3.0f%%), %zu tokens, %.1f MB/s", done_bytes / 1e6,
                total_bytes / 1e6, 100.0 * done_bytes / total_bytes, train.total + val.total,
                s > 0 ? done_bytes / 1e6 / s : 0.0);
        fflush(stderr);
    };
    // encode one split in blocks of ~16 MB cut where the pattern cuts anyway
    auto encode_into = [&](std::string_view text, ShardWriter& w) {
        const size_t kBlock = 16u << 20;
        size_t pos = 0;
        while (pos < text.size()) {
            size_t cut = pos + kBlock >= text.size() ? text.size() : bpe::Tokenizer::safe_cut(text, pos + kBlock);
            w.add(tok.encode_ordinary_parallel(text.substr(pos, cut - pos), threads));
            done_bytes += cut - pos;
            pos = cut;
            progress(false);
        }
    };
    for (size_t i = 0; i < a.positional.size(); i++) {
        std::string data = bpe::read_file(a.positional[i]);
        size_t split = (size_t)((double)data.size() * (1.0 - frac));
        while (split > 0 && split < data.size() && ((unsigned char)data[split] & 0xC0) == 0x80)
            split--;  // not inside a character
        std::string_view all(data);
        if (i > 0 && tok.eot_id() >= 0) {                      // files are separate documents
            if (split > 0) train.add({tok.eot_id()});
            if (split < data.size()) val.add({tok.eot_id()});
        }
        encode_into(all.substr(0, split), train);
        encode_into(all.substr(split), val);
    }
    train.finish();
    val.finish();
    progress(true);
    fprintf(stderr, "prepare: train %zu tokens in %d shard(s) %s/train_*.bin; val %zu tokens in %d shard(s)%s\n",
            train.total, train.n_shards, out.c_str(), val.total, val.n_shards,
            val.n_shards ? (" " + out + "/val_*.bin").c_str() : "");
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 2) { fputs(kUsage, stderr); return 2; }
    std::string cmd = argv[1];
    if (cmd == "--help" || cmd == "-h" || cmd == "help") { fputs(kUsage, stdout); return 0; }
    try {
        if (cmd == "encode") return cmd_encode(argc, argv);
        if (cmd == "decode") return cmd_decode(argc, argv);
        if (cmd == "train") return cmd_train(argc, argv);
        if (cmd == "prepare") return cmd_prepare(argc, argv);
        fprintf(stderr, "tok: unknown command '%s'; the commands are encode, decode, train, prepare (tok --help)\n",
                cmd.c_str());
        return 2;
    } catch (const UsageError& e) {
        fprintf(stderr, "%s (tok --help shows the usage)\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        fprintf(stderr, "tok: %s\n", e.what());
        return 1;
    }
}
