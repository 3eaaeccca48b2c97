// ----------------------------------------------------------------------------
// bpe.h — GPT-2 byte-level BPE tokenizer: encode, decode, train, token shards
//
// The whole public API of tokenizer/ (the training program links these sources;
// docs/tokenizer.md explains the algorithms). Everything lives in namespace bpe.
// Every function that meets bad input throws std::runtime_error whose what()
// says what is wrong, with the value, and what to do.
//
//   bpe::Tokenizer tok = bpe::Tokenizer::load("../shared/data/gpt2");  // encoder.json + vocab.bpe
//   std::vector<int> ids = tok.encode_ordinary("Hello world");        // [15496, 995]
//   std::vector<int> ids2 = tok.encode("hi<|endoftext|>");            // special tokens allowed
//   std::string text = tok.decode(ids);                                // exact bytes back
//   tok.vocab_size();  tok.eot_id();                                   // 50257, 50256
//
//   bpe::StreamDecoder dec(tok);           // for printing samples one token at a time:
//   std::cout << dec.push(id);             // returns only complete UTF-8 characters
//   std::cout << dec.flush();              // at the end: whatever is still held
//
//   bpe::write_shard("out/train_000.bin", ids, tok.vocab_size());      // llm.c .bin format
//   std::vector<int> back = bpe::read_shard("out/train_000.bin");
//
//   bpe::TrainedVocab v = bpe::train_bpe({text}, 4096);               // learn a vocabulary
//   bpe::save_vocab(v, "out/tok4096");     // writes encoder.json + vocab.bpe, loadable by load()
//
// Thread safety: a const Tokenizer may be used from many threads at once; each
// thread keeps its own cache of recently encoded words.
// ----------------------------------------------------------------------------
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bpe {

// ---- pre-tokenization -------------------------------------------------------
// GPT-2's pattern, hand-written (no regex engine), with Unicode 16.0 classes:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Invalid UTF-8 bytes count as one "other" character each ([^\s\p{L}\p{N}]).
// The pieces are consecutive and cover the text exactly.
std::vector<std::string_view> pretokenize(std::string_view text);

// ---- the tokenizer ----------------------------------------------------------
class Tokenizer {
public:
    // dir/encoder.json (token string -> id, in GPT-2's byte-to-unicode alphabet)
    // and dir/vocab.bpe (merges, one "left right" per line, in rank order).
    static Tokenizer load(const std::string& dir);
    // Same, from the two files' contents; `where` names them in error messages.
    static Tokenizer from_strings(std::string_view encoder_json, std::string_view vocab_bpe,
                                  const std::string& where = "<memory>");

    // Text -> ids. `<|endoftext|>` in the text is ordinary text here (tiktoken's
    // encode_ordinary): it becomes "<", "|", "endoftext", "|>" ... tokens.
    std::vector<int> encode_ordinary(std::string_view text) const;
    // Same, but special tokens (keys of encoder.json written "<|...|>", e.g.
    // <|endoftext|> = 50256) found in the text map to their ids (tiktoken's
    // encode(text, allowed_special="all")).
    std::vector<int> encode(std::string_view text) const;
    // encode_ordinary split over n_threads threads (0 = all cores). The text is
    // cut only where the pattern must cut anyway (letter, space, letter), so
    // the result equals encode_ordinary(text) exactly.
    std::vector<int> encode_ordinary_parallel(std::string_view text, int n_threads = 0) const;
    // First position >= at where text can be cut so that encoding the two
    // sides separately gives the same ids as encoding the whole (an ASCII
    // letter, then " " + ASCII letter: the pattern ends a piece there whatever
    // came before); text.size() if there is none. For streaming large inputs.
    static size_t safe_cut(std::string_view text, size_t at);
    // Appends the ids of one pre-tokenized piece (a word) to out. For callers
    // that do their own splitting; encode_ordinary = pretokenize + this.
    void encode_piece(std::string_view piece, std::vector<int>& out) const;

    // ids -> the exact bytes (may end inside a UTF-8 character if ids do).
    // Throws on an id outside [0, vocab_size()).
    std::string decode(std::span<const int> ids) const;
    // The bytes of one token. Throws on an id out of range.
    std::string_view token_bytes(int id) const;

    int vocab_size() const;
    int eot_id() const;                       // id of <|endoftext|>, or -1 if none
    int n_merges() const;

    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    struct Impl;                              // tokenizer/bpe.cpp
private:
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// Decoding one id at a time for printing. push() returns the text that is now
// complete: a UTF-8 character split over several tokens is held back until its
// last byte arrives. Bytes that can never form valid UTF-8 come out as U+FFFD
// (one per maximal invalid run, as Python's errors="replace"), so everything
// returned is valid UTF-8. flush() ends the stream.
class StreamDecoder {
public:
    explicit StreamDecoder(const Tokenizer& tok) : tok_(&tok) {}
    std::string push(int id);                 // throws on an id out of range
    std::string flush();
private:
    const Tokenizer* tok_;
    std::string pending_;                     // an incomplete UTF-8 character (<= 3 bytes)
};

// ---- training ---------------------------------------------------------------
// A learned byte-level vocabulary. Ids 0..255 are the single bytes in GPT-2's
// order (the bytes_to_unicode order, so they equal GPT-2's ids 0..255), then one
// id per merge in the order learned, then <|endoftext|> last.
struct TrainedVocab {
    std::vector<std::string> tokens;           // (V) id -> bytes
    std::vector<std::pair<int, int>> merges;   // (V - 257) rank -> (left id, right id)
    int eot_id = -1;
};

// Learns vocab_size tokens (256 bytes + merges + <|endoftext|>, so vocab_size
// >= 257) from the texts: pre-tokenize, count words, then repeatedly merge the
// most frequent adjacent pair. Ties go to the pair with the smaller (left id,
// right id), i.e. the one built from older tokens: deterministic. Stops early
// (with fewer tokens) if no pair is left. progress, if set, gets one line now and then.
TrainedVocab train_bpe(const std::vector<std::string_view>& texts, int vocab_size,
                       const std::function<void(const std::string&)>& progress = nullptr);
// Writes dir/encoder.json and dir/vocab.bpe (creating dir) in GPT-2's format.
void save_vocab(const TrainedVocab& vocab, const std::string& dir);

// ---- token shards (llm.c's .bin format) -------------------------------------
// 1024-byte header of 256 int32: [0] magic, [1] version, [2] token count, rest 0;
// then the tokens. vocab_size <= 65536: magic 20240520, version 1, uint16 tokens;
// larger: magic 20240801, version 7, uint32 tokens (llm.c's llama-3 layout).
constexpr int kShardMagicU16 = 20240520, kShardVersionU16 = 1;
constexpr int kShardMagicU32 = 20240801, kShardVersionU32 = 7;
constexpr size_t kShardHeaderBytes = 1024;

void write_shard(const std::string& path, std::span<const int> tokens, int vocab_size);
// Validates magic, version and that the file size matches the token count.
std::vector<int> read_shard(const std::string& path);

// ---- small helpers shared by the CLI, tests and fuzzers ----------------------
std::string read_file(const std::string& path);   // throws with the path and strerror
// GPT-2's byte <-> printable code point map (bytes_to_unicode): byte b is
// written as code point byte_to_unicode(b) in encoder.json and vocab.bpe.
int byte_to_unicode(unsigned char b);

} // namespace bpe
