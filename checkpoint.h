// checkpoint.h — gpt.cu's checkpoint file: weights, optionally AdamW's moments, and a JSON header
// with everything needed to continue (model config, tokenizer fingerprint, step, data position, RNGs).
//
// Layout (little-endian):
//   bytes 0..7    "GPTCUCKP"                  magic
//   bytes 8..11   uint32 version (1)
//   bytes 12..15  uint32 n = JSON header length
//   bytes 16..    n bytes of JSON: {"model": {...}, "tokenizer": {...}, "num_parameters": P,
//                 "dtype": "float32", "has_optimizer": bool, "meta": {"step", "data", "sample_rng", ...}}
//   then          float32 params[P]   in gpt.cuh's tensor order (param_sizes)
//   then          float32 m[P], v[P]  if has_optimizer
// Written to PATH.tmp, fsynced and renamed over PATH, so a crash or a power cut at any moment leaves the previous
// checkpoint or the new one. Every value in it is finite (write_checkpoint refuses NaN and inf).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common.cuh"
#include "tokenizer/bpe.h"

constexpr char checkpoint_magic[8] = {'G', 'P', 'T', 'C', 'U', 'C', 'K', 'P'};
constexpr uint32_t checkpoint_version = 1;

// Which tokenizer a model was trained with: a model only makes sense with the same ids.
struct TokenizerInfo {
    std::string dir;
    int vocab_size = 0;
    int eot_id = -1;
    std::string fingerprint;  // FNV-1a 64 of encoder.json + vocab.bpe, in hex
};
inline TokenizerInfo tokenizer_info(const std::string& dir, const bpe::Tokenizer& tok) {
    uint64_t h = 1469598103934665603ull;
    for (const char* name : {"/encoder.json", "/vocab.bpe"})
        for (unsigned char c : bpe::read_file(dir + name)) h = (h ^ c) * 1099511628211ull;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    return {dir, tok.vocab_size(), tok.eot_id(), hex};
}
inline nlohmann::json to_json_info(const TokenizerInfo& t) {
    return {{"dir", t.dir}, {"vocab_size", t.vocab_size}, {"eot_id", t.eot_id}, {"fingerprint", t.fingerprint}};
}

inline nlohmann::json rng_to_json(const Rng& r) { return {r.s[0], r.s[1], r.s[2], r.s[3]}; }
inline void rng_from_json(Rng& r, const nlohmann::json& j) {
    for (int i = 0; i < 4; i++) r.s[i] = j.at(i).get<uint64_t>();
}

struct Checkpoint {
    nlohmann::json header;  // the whole JSON header
    nlohmann::json meta;    // header["meta"]
    std::vector<float> params, m, v;
};

// Thrown instead of writing a tensor with a NaN or an infinity: a checkpoint only ever holds finite numbers,
// so "the last checkpoint" is always one that can be trained on.
struct NonFiniteError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The arrays a checkpoint writes, each num_parameters floats, where they live (m and v nullptr: weights
// only). They are read in chunks through to_host (a memcpy for host memory, cudaMemcpy from a GPU), so
// writing never holds a host copy of a whole array: at GPT-2 124M the three would be 1.5 GB on top of
// the training run's own memory (docs/benchmarks.md, peak RSS).
struct CheckpointArrays {
    size_t num_parameters = 0;
    const float* params = nullptr;  // (num_parameters)
    const float* m = nullptr;       // (num_parameters) AdamW first moment, or nullptr
    const float* v = nullptr;       // (num_parameters) AdamW second moment, or nullptr
    void (*to_host)(void* dst, const void* src, size_t bytes) = nullptr;  // nullptr: the arrays are host memory
};

// Refuses (NonFiniteError, naming the first bad element) arrays that are not all finite, before a byte is
// written; then writes atomically and durably (write_file_atomically: the old file or the new one survives a kill
// or a power cut, never a torn one).
template <class Config>
void write_checkpoint(const std::string& path, const Config& config, const TokenizerInfo& tok,
                      const nlohmann::json& meta, const CheckpointArrays& arrays) {
    const size_t P = arrays.num_parameters;
    bool has_optimizer = arrays.m != nullptr;
    std::vector<float> staging(arrays.to_host ? std::min<size_t>(P, size_t(1) << 20) : 0);  // 4 MB at most
    // calls fn(chunk pointer, offset, count) over `src` in host-readable chunks
    auto for_chunks = [&](const float* src, auto&& fn) {
        if (!arrays.to_host) return fn(src, size_t{0}, P);
        for (size_t done = 0; done < P; done += staging.size()) {
            size_t chunk = std::min(staging.size(), P - done);
            arrays.to_host(staging.data(), src + done, chunk * sizeof(float));
            fn(staging.data(), done, chunk);
        }
    };
    auto check_finite = [&](const char* what, const float* src) {
        for_chunks(src, [&](const float* x, size_t offset, size_t n) {
            for (size_t i = 0; i < n; i++)
                if (!std::isfinite(x[i]))
                    throw NonFiniteError(std::string(what) + "[" + std::to_string(offset + i) + "] is " +
                                         std::to_string(x[i]) + " (of " + std::to_string(P) + " values)");
        });
    };
    check_finite("parameters", arrays.params);
    if (has_optimizer) {
        check_finite("AdamW m", arrays.m);
        check_finite("AdamW v", arrays.v);
    }
    nlohmann::json header = {{"model", config}, {"tokenizer", to_json_info(tok)}, {"num_parameters", P},
                             {"dtype", "float32"}, {"has_optimizer", has_optimizer}, {"meta", meta}};
    std::string text = header.dump();
    write_file_atomically(path, [&](File& f) {
        uint32_t n = static_cast<uint32_t>(text.size());
        f.write(checkpoint_magic, 8);
        f.write(&checkpoint_version, 4);
        f.write(&n, 4);
        f.write(text.data(), text.size());
        auto write = [&](const float* x, size_t, size_t count) { f.write(x, count * sizeof(float)); };
        for_chunks(arrays.params, write);
        if (has_optimizer) {
            for_chunks(arrays.m, write);
            for_chunks(arrays.v, write);
        }
    });
}

// The same from host vectors (m and v empty: weights only).
template <class Config>
void write_checkpoint(const std::string& path, const Config& config, const TokenizerInfo& tok,
                      const nlohmann::json& meta, const std::vector<float>& params, const std::vector<float>& m,
                      const std::vector<float>& v) {
    CheckpointArrays arrays{params.size(), params.data(), m.empty() ? nullptr : m.data(),
                            v.empty() ? nullptr : v.data()};
    write_checkpoint(path, config, tok, meta, arrays);
}

// Reads and validates a checkpoint: magic, version, header, and that the file holds exactly the
// tensors the header announces. Every failure says what is wrong and what to do.
inline Checkpoint read_checkpoint(const std::string& path) {
    File f(path, "rb");
    size_t file_bytes = f.size();
    char magic[8];
    if (file_bytes < 16)
        throw std::runtime_error("checkpoint " + path + ": only " + std::to_string(file_bytes) +
                                 " bytes, too short to be a gpt.cu checkpoint");
    f.read(magic, 8, "magic");
    if (std::memcmp(magic, checkpoint_magic, 8) != 0)
        throw std::runtime_error(
            "checkpoint " + path +
            ": does not start with GPTCUCKP, so it is not a gpt.cu checkpoint; was it written by another program?");
    uint32_t version = 0, n = 0;
    f.read(&version, 4, "version");
    if (version != checkpoint_version)
        throw std::runtime_error("checkpoint " + path + ": format version " + std::to_string(version) +
                                 ", but this program reads version " + std::to_string(checkpoint_version));
    f.read(&n, 4, "header length");
    if (16ull + n > file_bytes)
        throw std::runtime_error("checkpoint " + path + ": header length " + std::to_string(n) +
                                 " runs past the end of the file (truncated?)");
    std::string text(n, '\0');
    f.read(text.data(), n, "JSON header");
    Checkpoint ck;
    try {
        ck.header = nlohmann::json::parse(text);
        ck.meta = ck.header.at("meta");
        size_t P = ck.header.at("num_parameters");
        bool opt = ck.header.at("has_optimizer");
        if (ck.header.at("dtype") != "float32")
            throw std::runtime_error("dtype " + ck.header.at("dtype").dump() + " is not float32");
        size_t expected = 16 + n + P * sizeof(float) * (opt ? 3 : 1);
        if (file_bytes != expected)
            throw std::runtime_error("holds " + std::to_string(file_bytes) + " bytes but its header announces " +
                                     std::to_string(expected) + " (" + std::to_string(P) + " parameters" +
                                     (opt ? " + optimizer state" : "") + "): truncated or corrupt");
        ck.params.resize(P);
        f.read(ck.params.data(), P * sizeof(float), "parameters");
        if (opt) {
            ck.m.resize(P);
            ck.v.resize(P);
            f.read(ck.m.data(), P * sizeof(float), "AdamW m");
            f.read(ck.v.data(), P * sizeof(float), "AdamW v");
        }
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error("checkpoint " + path + ": malformed JSON header (" + e.what() + ")");
    } catch (const std::runtime_error& e) {
        if (std::string(e.what()).rfind(path, 0) == 0 || std::string(e.what()).rfind("checkpoint", 0) == 0) throw;
        throw std::runtime_error("checkpoint " + path + ": " + e.what());
    }
    return ck;
}

// A checkpoint continues a run only with the same model shape and the same tokenizer.
template <class Config>
void check_compatible(const Checkpoint& ck, const Config& config, const TokenizerInfo& tok, const std::string& path) {
    nlohmann::json want = config, have = ck.header.at("model");
    if (want != have)
        throw std::runtime_error("checkpoint " + path + " is of another model config:\n  checkpoint: " + have.dump() +
                                 "\n  requested:  " + want.dump() + "\nuse the same --model, or another --out-dir");
    if (ck.header.at("tokenizer").at("fingerprint") != tok.fingerprint)
        throw std::runtime_error("checkpoint " + path + " was trained with another tokenizer (" +
                                 ck.header.at("tokenizer").dump() + "); pass the same --tokenizer directory");
}
