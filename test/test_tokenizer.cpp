// Tests for tokenizer/: GPT-2 byte-level BPE, training, shards, the tok CLI.
// Run from the repository root; data from $GPTCU_DATA (default ../shared/data).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "bpe.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;

namespace {

// The tok program of this build: ./tokenizer/tok, or build/asan/tokenizer/tok in a sanitizer build (Makefile).
#ifndef GPTCU_PROGRAMS_DIR
#define GPTCU_PROGRAMS_DIR "."
#endif
const std::string tok_program = GPTCU_PROGRAMS_DIR "/tokenizer/tok";

std::string data_dir() {
    const char* d = getenv("GPTCU_DATA");
    return d && *d ? d : "../shared/data";
}

const bpe::Tokenizer& gpt2() {
    static const bpe::Tokenizer tok = bpe::Tokenizer::load(data_dir() + "/gpt2");
    return tok;
}

const std::string& shakespeare() {
    static const std::string text = bpe::read_file(data_dir() + "/tinyshakespeare.txt");
    return text;
}

// A fresh scratch directory per test run, removed at exit.
const fs::path& scratch() {
    static const fs::path dir = [] {
        fs::path d = fs::temp_directory_path() / ("gptcu_test_tokenizer_" + std::to_string(getpid()));
        fs::remove_all(d);
        fs::create_directories(d);
        std::atexit([] { std::error_code ec; fs::remove_all(scratch(), ec); });
        return d;
    }();
    return dir;
}

void write_text(const fs::path& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}

// true if s is valid UTF-8
bool valid_utf8(const std::string& s) {
    size_t i = 0;
    while (i < s.size()) {
        unsigned char c = (unsigned char)s[i];
        int need = c < 0x80                   ? 1
                   : (c >= 0xC2 && c <= 0xDF) ? 2
                   : (c >= 0xE0 && c <= 0xEF) ? 3
                   : (c >= 0xF0 && c <= 0xF4) ? 4
                                              : 0;
        if (need == 0 || i + need > s.size()) return false;
        for (int k = 1; k < need; k++) if (((unsigned char)s[i + k] & 0xC0) != 0x80) return false;
        if (need == 3 &&
            ((c == 0xE0 && (unsigned char)s[i + 1] < 0xA0) || (c == 0xED && (unsigned char)s[i + 1] > 0x9F)))
            return false;
        if (need == 4 &&
            ((c == 0xF0 && (unsigned char)s[i + 1] < 0x90) || (c == 0xF4 && (unsigned char)s[i + 1] > 0x8F)))
            return false;
        i += need;
    }
    return true;
}

// Runs a shell command; returns its exit status and stdout+stderr in *out.
int run(const std::string& cmd, std::string* out) {
    fs::path log = scratch() / "cmd.log";
    int rc = std::system(("(" + cmd + ") > " + log.string() + " 2>&1").c_str());
    *out = bpe::read_file(log.string());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// Expects f() to throw std::runtime_error whose message contains `part`.
template <class F>
void check_throws_with(F&& f, const std::string& part) {
    try {
        f();
        FAIL("expected an error containing: " << part);
    } catch (const std::runtime_error& e) {
        INFO("message: " << e.what());
        CHECK(std::string(e.what()).find(part) != std::string::npos);
    }
}

} // namespace

// ---- GPT-2 exactness -------------------------------------------------------------

TEST_CASE("gpt2: every test vector encodes exactly and decodes back") {
    auto vectors = nlohmann::json::parse(bpe::read_file(data_dir() + "/gpt2/test_vectors.json"));
    REQUIRE(vectors.size() == 72);
    const bpe::Tokenizer& tok = gpt2();
    CHECK(tok.vocab_size() == 50257);
    CHECK(tok.eot_id() == 50256);
    CHECK(tok.n_merges() == 50000);
    int special = 0;
    for (const auto& v : vectors) {
        std::string text = v["text"];
        std::vector<int> ids = v["ids"];
        INFO("text: \"" << text << "\" (" << v["source"].get<std::string>() << ")");
        if (v.contains("allowed_special")) {
            special++;
            CHECK(tok.encode(text) == ids);                  // <|endoftext|> -> 50256
            CHECK(tok.encode_ordinary(text) != ids);         // ... but not as ordinary text
        } else {
            CHECK(tok.encode_ordinary(text) == ids);
            CHECK(tok.encode(text) == ids);                  // no special token inside
        }
        CHECK(tok.decode(ids) == text);
    }
    CHECK(special == 1);
}

TEST_CASE("gpt2: Tiny Shakespeare token counts (nanoGPT's published numbers)") {
    const std::string& text = shakespeare();
    REQUIRE(text.size() == 1115394);
    const size_t n_train = (size_t)(text.size() * 0.9);
    REQUIRE(n_train == 1003854);
    std::string_view all(text);
    const bpe::Tokenizer& tok = gpt2();
    CHECK(tok.encode_ordinary(all.substr(0, n_train)).size() == 301966);
    CHECK(tok.encode_ordinary(all.substr(n_train)).size() == 36059);
    std::vector<int> whole = tok.encode_ordinary(all);
    CHECK(whole.size() == 338025);
    CHECK(tok.decode(whole) == text);
    for (int threads : {2, 3, 8}) {
        INFO("threads " << threads);
        CHECK(tok.encode_ordinary_parallel(all, threads) == whole);
    }
}

TEST_CASE("pretokenize: GPT-2's pattern, piece by piece") {
    using V = std::vector<std::string_view>;
    CHECK(bpe::pretokenize("Hello world") == V{"Hello", " world"});
    CHECK(bpe::pretokenize("a  b") == V{"a", " ", " b"});              // \s+(?!\S) leaves one space for " b"
    CHECK(bpe::pretokenize("a\n\nb") == V{"a", "\n", "\n", "b"});      // ... which "b" cannot take: \s+ alone
    CHECK(bpe::pretokenize("end   ") == V{"end", "   "});               // at the end: all of it
    CHECK(bpe::pretokenize("I've he's we'RE") == V{"I", "'ve", " he", "'s", " we", "'", "RE"});  // lowercase only
    CHECK(bpe::pretokenize("x2024y") == V{"x", "2024", "y"});
    CHECK(bpe::pretokenize("!!!'s") == V{"!!!'", "s"});                 // punctuation run is greedy
    CHECK(bpe::pretokenize(" 's") == V{" '", "s"});
    CHECK(bpe::pretokenize("<|endoftext|>") == V{"<|", "endoftext", "|>"});
    CHECK(bpe::pretokenize("\xE3\x80\x80word") == V{"\xE3\x80\x80", "word"});  // U+3000 is \s but not " "
    // Khmer: vowel signs (Mc/Mn) are neither L nor N, so they split letter runs
    CHECK(bpe::pretokenize("\xE1\x9E\x9F\xE1\x9E\xBD") == V{"\xE1\x9E\x9F", "\xE1\x9E\xBD"});
    CHECK(bpe::pretokenize("").empty());
}

TEST_CASE("gpt2: special tokens only on the special path") {
    const bpe::Tokenizer& tok = gpt2();
    std::string text = "a<|endoftext|>b<|endoftext|>";
    std::vector<int> ordinary = tok.encode_ordinary(text);
    for (int id : ordinary) CHECK(id != 50256);
    CHECK(tok.decode(ordinary) == text);
    std::vector<int> special = tok.encode(text);
    CHECK(special == std::vector<int>{64, 50256, 65, 50256});
    CHECK(tok.decode(special) == text);
    CHECK(tok.encode("<|endoftext").size() > 1);           // incomplete: ordinary text
}

TEST_CASE("gpt2: any bytes, including invalid UTF-8, encode and decode back exactly") {
    const bpe::Tokenizer& tok = gpt2();
    const unsigned seed = 1234;
    std::mt19937 rng(seed);
    INFO("seed " << seed);
    // hand-picked invalid sequences: stray continuation, overlong, surrogate, > U+10FFFF, truncated
    for (std::string s :
         {std::string("\x80"), std::string("a\xC0\xAFz"), std::string("\xED\xA0\x80"), std::string("\xF4\x90\x80\x80"),
          std::string("ok \xE2\x82"), std::string("\xFF\xFE\x00 x", 5)}) {
        std::vector<int> ids = tok.encode_ordinary(s);
        CHECK(tok.decode(ids) == s);
    }
    // random bytes, random short texts mixing valid UTF-8 and garbage
    const char* atoms[] = {"a", "Z", " ", "  ", "\n", "\t", "'s", "'", "7", "!", "\xC3\xA9", "\xE6\x97\xA5",
                           "\xF0\x9F\x8C\x8D", "\x80", "\xC3", "\xE6\x97", "\xFF", " the", "\xE3\x80\x80"};
    for (int iter = 0; iter < 3000; iter++) {
        std::string s;
        int n = (int)(rng() % 40);
        for (int k = 0; k < n; k++) {
            if (rng() % 4 == 0) s += (char)(rng() % 256);
            else s += atoms[rng() % (sizeof atoms / sizeof atoms[0])];
        }
        INFO("iteration " << iter);
        std::vector<int> ids = tok.encode_ordinary(s);
        REQUIRE(tok.decode(ids) == s);
        std::string joined;
        for (auto p : bpe::pretokenize(s)) { CHECK(!p.empty()); joined += p; }
        REQUIRE(joined == s);
    }
}

TEST_CASE("gpt2: long inputs (a 100 KB run of one letter, of spaces, of digits)") {
    const bpe::Tokenizer& tok = gpt2();
    // expected counts are tiktoken's: "aaaa" is one token, "77" one, "\n\n" one, and
    // GPT-2 has no merge of two spaces (a run of spaces stays one token per space)
    const std::pair<char, size_t> cases[] = {{'a', 25000}, {' ', 100000}, {'7', 50000}, {'\n', 50000}};
    for (auto [c, expected] : cases) {
        std::string s(100000, c);
        std::vector<int> ids = tok.encode_ordinary(s);
        CHECK(tok.decode(ids) == s);
        CHECK(ids.size() == expected);
    }
}

TEST_CASE("decode: ids out of range are an error that names the id") {
    const bpe::Tokenizer& tok = gpt2();
    check_throws_with([&] { tok.decode(std::vector<int>{15496, 50257}); }, "id 50257 at position 1 is out of range");
    check_throws_with([&] { tok.decode(std::vector<int>{-1}); }, "id -1");
    check_throws_with([&] { tok.token_bytes(1 << 30); }, "out of range");
    CHECK(tok.decode(std::vector<int>{}).empty());
}

// ---- streaming decoder -----------------------------------------------------------

TEST_CASE("stream decoder: a character split over tokens is printed whole once complete") {
    const bpe::Tokenizer& tok = gpt2();
    std::vector<int> ids = tok.encode_ordinary("hi \xF0\x9F\x8C\x8D!");    // "hi 🌍!"
    REQUIRE(ids == std::vector<int>{5303, 12520, 234, 235, 0});  // the emoji is 3 tokens: bytes F0 9F | 8C | 8D
    bpe::StreamDecoder dec(tok);
    CHECK(dec.push(ids[0]) == "hi");
    CHECK(dec.push(ids[1]) == " ");                          // " \xF0\x9F": space now, the rest held back
    CHECK(dec.push(ids[2]) == "");
    CHECK(dec.push(ids[3]) == "\xF0\x9F\x8C\x8D");
    CHECK(dec.push(ids[4]) == "!");
    CHECK(dec.flush() == "");

    // on random valid UTF-8 text, the pieces join to decode(ids) and each is valid UTF-8
    std::mt19937 rng(7);
    const char* atoms[] = {"a",
                           " ",
                           "\xC3\xA9",
                           "\xE6\x97\xA5\xE6\x9C\xAC",
                           "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9",
                           "\xE1\x9E\x9F\xE1\x9E\xBD",
                           "\n",
                           "\xD0\xBF\xD1\x80"};
    for (int iter = 0; iter < 500; iter++) {
        std::string s;
        for (int k = (int)(rng() % 30); k > 0; k--) s += atoms[rng() % 8];
        bpe::StreamDecoder d(tok);
        std::string out;
        for (int id : tok.encode_ordinary(s)) {
            std::string piece = d.push(id);
            CHECK(valid_utf8(piece));
            out += piece;
        }
        out += d.flush();
        REQUIRE(out == s);
    }
}

TEST_CASE("stream decoder: bytes that can never be UTF-8 come out as U+FFFD") {
    const bpe::Tokenizer& tok = gpt2();
    const std::string fffd = "\xEF\xBF\xBD";
    bpe::StreamDecoder dec(tok);
    std::vector<int> ids = tok.encode_ordinary("a\xFF" "b\xE6\x97" "c");   // bad byte; truncated 3-byte char
    std::string out;
    for (int id : ids) out += dec.push(id);
    out += dec.flush();
    CHECK(out == "a" + fffd + "b" + fffd + "c");
    bpe::StreamDecoder dec2(tok);
    CHECK(dec2.push(tok.encode_ordinary("\xE6\x97")[0]) == "");   // may still complete...
    CHECK(dec2.flush() == fffd);                                    // ... but the stream ended
    CHECK_THROWS_AS(dec2.push(99999), std::runtime_error);
}

// ---- loader errors ----------------------------------------------------------------

TEST_CASE("load: missing or corrupt tokenizer files give clear errors") {
    const std::string enc = bpe::read_file(data_dir() + "/gpt2/encoder.json");
    const std::string merges = bpe::read_file(data_dir() + "/gpt2/vocab.bpe");
    check_throws_with([] { bpe::Tokenizer::load("/nonexistent/tok"); }, "/nonexistent/tok/encoder.json: cannot open");
    auto load = [](std::string e, std::string m) { return [e, m] { bpe::Tokenizer::from_strings(e, m, "t"); }; };
    check_throws_with(load(enc.substr(0, 5000), merges), "t/encoder.json: not valid JSON");
    check_throws_with(load("[1,2]", merges), "expected a non-empty JSON object");
    check_throws_with(load("{}", merges), "expected a non-empty JSON object");
    check_throws_with(load(R"({"a": "x"})", ""), "is string, expected an integer id");
    check_throws_with(load(R"({"a": 5})", ""), "id 5 of \"a\" is outside [0, 1)");
    check_throws_with(load(R"({"a": 0, "b": 0})", ""), "id 0 is used twice");
    check_throws_with(load(R"({"a b": 0})", ""), "contains U+0020");          // a real space is not in the alphabet
    check_throws_with(load(R"({"a": 0})", ""), "has no token");               // bytes other than 'a' missing
    // vocab.bpe problems, with GPT-2's encoder.json
    check_throws_with(load(enc, "#version: 0.2\nĠt\n"), "t/vocab.bpe line 2");
    check_throws_with(load(enc, "#version: 0.2\nĠt\n"), "expected two tokens separated by one space");
    check_throws_with(load(enc, "#version: 0.2\nĠ  t\n"), "expected two tokens");
    check_throws_with(load(enc, "#version: 0.2\nĠ t\nĠ t\n"), "line 3");
    check_throws_with(load(enc, "#version: 0.2\nĠ t\nĠ t\n"), "already listed");
    check_throws_with(load(enc, "#version: 0.2\nqqqqqq zzzzzzz\n"), "is not in encoder.json");
    check_throws_with(load(enc, "#version: 0.2\nĠ 日\n"), "U+65E5");
    // valid: a prefix of the merges is a smaller (worse) but working tokenizer
    bpe::Tokenizer small = bpe::Tokenizer::from_strings(enc, merges.substr(0, merges.find("\n", 1000) + 1));
    CHECK(small.decode(small.encode_ordinary("hello world")) == "hello world");
}

// ---- training ---------------------------------------------------------------------

TEST_CASE("train: a hand-checkable example and the tie-breaking rule") {
    // words: "ab" x3, "abc" x1 -> pairs (a,b)=4, (b,c)=1: first merge a+b, then ab+c
    bpe::TrainedVocab v = bpe::train_bpe({"ab ab ab abc"}, 257 + 3);
    // pieces: "ab", " ab", " ab", " abc": (a,b)=4 first; then (" ",ab)=3; then (" ab",c)=1
    REQUIRE(v.merges.size() >= 2);
    CHECK(v.tokens[v.merges[0].first] + v.tokens[v.merges[0].second] == "ab");
    CHECK(v.tokens[256] == "ab");
    CHECK(v.tokens[257] == " ab");
    CHECK(v.tokens.back() == "<|endoftext|>");
    CHECK(v.eot_id == (int)v.tokens.size() - 1);
    // a tie: "xy" and "zw" both twice; the pair with the smaller (left id, right id) wins.
    // ids 0..255 follow GPT-2's order, where printable ASCII keeps its order: 'x' < 'z'.
    bpe::TrainedVocab t = bpe::train_bpe({"zw xy zw xy"}, 258);
    REQUIRE(t.merges.size() == 1);
    CHECK(t.tokens[256] == "xy");
    // ids 0..255 are GPT-2's
    for (int id = 0; id < 256; id++) CHECK(t.tokens[id] == gpt2().token_bytes(id));
}

TEST_CASE("train: Tiny Shakespeare -> 4096 tokens, deterministic, loads and round-trips") {
    const std::string& text = shakespeare();
    auto t0 = std::chrono::steady_clock::now();
    bpe::TrainedVocab a = bpe::train_bpe({text}, 4096);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE("trained 4096 tokens on Tiny Shakespeare in " << secs << " s");   // printed, not asserted
    bpe::TrainedVocab b = bpe::train_bpe({text}, 4096);
    REQUIRE(a.tokens.size() == 4096);
    CHECK(a.tokens == b.tokens);
    CHECK(a.merges == b.merges);
    fs::path dir = scratch() / "ts4096";
    bpe::save_vocab(a, dir.string());
    bpe::Tokenizer tok = bpe::Tokenizer::load(dir.string());
    CHECK(tok.vocab_size() == 4096);
    CHECK(tok.n_merges() == 4096 - 257);
    CHECK(tok.eot_id() == 4095);
    std::vector<int> ids = tok.encode_ordinary(text);
    CHECK(tok.decode(ids) == text);
    CHECK(ids.size() < text.size() / 3);                     // it compresses (GPT-2's 50257 tokens: 338,025)
    CHECK(tok.encode("x<|endoftext|>").back() == 4095);
    // the same files are written on a second save: byte-identical
    fs::path dir2 = scratch() / "ts4096b";
    bpe::save_vocab(b, dir2.string());
    CHECK(bpe::read_file((dir / "vocab.bpe").string()) == bpe::read_file((dir2 / "vocab.bpe").string()));
    CHECK(bpe::read_file((dir / "encoder.json").string()) == bpe::read_file((dir2 / "encoder.json").string()));
    // also round-trips text it was not trained on, including non-ASCII
    std::string other = "Caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC 2024! \xF0\x9F\x8C\x8D";
    CHECK(tok.decode(tok.encode_ordinary(other)) == other);
    CHECK_THROWS_AS(bpe::train_bpe({text}, 256), std::runtime_error);
}

// ---- shards -------------------------------------------------------------------------

TEST_CASE("shards: llm.c .bin header and tokens, uint16 and uint32") {
    std::vector<int> tokens = {0, 1, 50256, 65535, 7};
    fs::path p16 = scratch() / "s16.bin";
    bpe::write_shard(p16.string(), tokens, 65536);
    std::string raw = bpe::read_file(p16.string());
    REQUIRE(raw.size() == 1024 + 2 * tokens.size());
    const int32_t* h = (const int32_t*)raw.data();
    CHECK(h[0] == 20240520);
    CHECK(h[1] == 1);
    CHECK(h[2] == 5);
    for (int i = 3; i < 256; i++) CHECK(h[i] == 0);
    CHECK(((const uint16_t*)(raw.data() + 1024))[3] == 65535);
    CHECK(bpe::read_shard(p16.string()) == tokens);

    std::vector<int> wide = {0, 65536, 100000, 3};
    fs::path p32 = scratch() / "s32.bin";
    bpe::write_shard(p32.string(), wide, 100001);
    std::string raw32 = bpe::read_file(p32.string());
    REQUIRE(raw32.size() == 1024 + 4 * wide.size());
    CHECK(((const int32_t*)raw32.data())[0] == 20240801);
    CHECK(((const int32_t*)raw32.data())[1] == 7);
    CHECK(bpe::read_shard(p32.string()) == wide);

    fs::path empty = scratch() / "empty.bin";
    bpe::write_shard(empty.string(), {}, 50257);
    CHECK(bpe::read_shard(empty.string()).empty());
}

TEST_CASE("shards: bad tokens and corrupt files are clear errors") {
    fs::path p = scratch() / "bad.bin";
    check_throws_with([&] { bpe::write_shard(p.string(), std::vector<int>{1, 70000}, 65536); },
                      "token 70000 at position 1 is outside the vocabulary [0, 65536)");
    CHECK(!fs::exists(p));                                   // nothing half-written
    check_throws_with([&] { bpe::read_shard((scratch() / "nope.bin").string()); }, "cannot open");
    write_text(p, "short");
    check_throws_with([&] { bpe::read_shard(p.string()); }, "shorter than the 1024-byte header");
    std::string header(1024, '\0');
    ((int32_t*)header.data())[0] = 12345;
    write_text(p, header);
    check_throws_with([&] { bpe::read_shard(p.string()); }, "magic 12345 is not a token shard");
    ((int32_t*)header.data())[0] = 20240520;
    ((int32_t*)header.data())[1] = 3;
    write_text(p, header);
    check_throws_with([&] { bpe::read_shard(p.string()); }, "version 3");
    ((int32_t*)header.data())[1] = 1;
    ((int32_t*)header.data())[2] = 10;
    write_text(p, header + std::string(8, 'x'));             // 4 tokens where 10 were promised
    check_throws_with([&] { bpe::read_shard(p.string()); }, "should be 1044 bytes, but it is 1032");
}

// ---- the tok CLI -------------------------------------------------------------------

TEST_CASE("tok CLI: encode, decode, --allow-special, errors and exit codes") {
    REQUIRE(fs::exists(tok_program));
    const std::string tok = "GPTCU_DATA=" + data_dir() + " " + tok_program;
    std::string out;
    CHECK(run(tok + " --help", &out) == 0);
    CHECK(out.find("tok prepare") != std::string::npos);
    CHECK(run(tok, &out) == 2);
    fs::path in = scratch() / "in.txt";
    write_text(in, "hello <|endoftext|>");
    CHECK(run(tok + " encode " + in.string(), &out) == 0);
    CHECK(out.find("50256") == std::string::npos);
    CHECK(run(tok + " encode --allow-special " + in.string(), &out) == 0);
    CHECK(out == "31373 220 50256\n");
    CHECK(run("echo '31373 220 50256' | " + tok + " decode", &out) == 0);
    CHECK(out == "hello <|endoftext|>");
    // whole file round trip through the CLI (stdin and files)
    fs::path ids = scratch() / "ts.ids", back = scratch() / "ts.txt";
    std::string ts = data_dir() + "/tinyshakespeare.txt";
    CHECK(run(tok + " encode " + ts + " > " + ids.string(), &out) == 0);
    CHECK(run(tok + " decode < " + ids.string() + " > " + back.string(), &out) == 0);
    CHECK(bpe::read_file(back.string()) == shakespeare());
    // errors: message on stderr, non-zero exit
    CHECK(run("printf '' | " + tok + " encode", &out) == 1);
    CHECK(out.find("empty") != std::string::npos);
    CHECK(run("echo '1 2 50257' | " + tok + " decode", &out) == 1);
    CHECK(out.find("id 50257 (token 2) is out of range") != std::string::npos);
    CHECK(run("echo '1 x2' | " + tok + " decode", &out) == 1);
    CHECK(out.find("'x2'") != std::string::npos);
    CHECK(run(tok + " encode --vocab " + scratch().string() + " " + in.string(), &out) == 1);
    CHECK(out.find("encoder.json: cannot open") != std::string::npos);
    CHECK(run(tok + " encode /nonexistent.txt", &out) == 1);
    CHECK(run(tok + " encode --frobnicate", &out) == 2);
    CHECK(run(tok + " frobnicate", &out) == 2);
}

TEST_CASE("tok CLI: train and prepare") {
    const std::string tok = "GPTCU_DATA=" + data_dir() + " " + tok_program;
    const std::string ts = data_dir() + "/tinyshakespeare.txt";
    std::string out;
    fs::path vdir = scratch() / "cli_vocab";
    CHECK(run(tok + " train --vocab-size 1000 --out " + vdir.string() + " " + ts, &out) == 0);
    bpe::Tokenizer small = bpe::Tokenizer::load(vdir.string());
    CHECK(small.vocab_size() == 1000);
    CHECK(run(tok + " train --vocab-size 100 --out " + vdir.string() + " " + ts, &out) == 2);

    // GPT-2 shards of the nanoGPT split: 301,966 train and 36,059 val tokens
    fs::path pdir = scratch() / "prep";
    CHECK(run(tok + " prepare --val-fraction 0.1 --out " + pdir.string() + " " + ts, &out) == 0);
    std::vector<int> train = bpe::read_shard((pdir / "train_000.bin").string());
    std::vector<int> val = bpe::read_shard((pdir / "val_000.bin").string());
    CHECK(train.size() == 301966);
    CHECK(val.size() == 36059);
    CHECK(gpt2().decode(train) + gpt2().decode(val) == shakespeare());
    // several shards of at most --shard-tokens, and a small vocabulary
    fs::path sdir = scratch() / "prep_small";
    CHECK(run(tok + " prepare --val-fraction 0 --shard-tokens 100000 --vocab " + vdir.string() + " --out " +
              sdir.string() + " " + ts + " " + ts, &out) == 0);
    std::vector<int> all;
    int n = 0;
    for (; fs::exists(sdir / ("train_00" + std::to_string(n) + ".bin")); n++) {
        std::vector<int> part = bpe::read_shard((sdir / ("train_00" + std::to_string(n) + ".bin")).string());
        CHECK(part.size() <= 100000);
        all.insert(all.end(), part.begin(), part.end());
    }
    CHECK(n >= 2);
    CHECK(!fs::exists(sdir / "val_000.bin"));
    CHECK(small.decode(all) == shakespeare() + "<|endoftext|>" + shakespeare());   // files separated by EOT
    CHECK(run(tok + " prepare --val-fraction 1.5 --out " + pdir.string() + " " + ts, &out) == 2);
}
