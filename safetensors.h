// safetensors.h — Hugging Face's safetensors format, read and written by hand.
//
// A .safetensors file (https://huggingface.co/docs/safetensors, little-endian):
//   bytes 0..7         uint64 N: length of the JSON header
//   bytes 8..8+N-1     JSON: {"NAME": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...,
//                             "__metadata__": {"key": "string value", ...}}   (optional; may be padded with spaces)
//   bytes 8+N..        the data buffer; tensor NAME is bytes [begin, end) of it, row-major, C order
//
// Everything in a file is untrusted: the reader checks that N fits in the file, that the header is a JSON
// object of well-formed entries, that every dtype is known, that end − begin = (product of the shape) ×
// (bytes per element) without overflow, that every range lies inside the buffer, and that the ranges do
// not overlap and cover the buffer exactly (as the reference implementation requires). Every failure is
// a std::runtime_error naming the file, the tensor and the values. dev/fuzz_safetensors.cpp feeds it
// random bytes under ASan/UBSan.
//
// Supported element types: F32, F16, BF16 (read; converted to float32), F32 and BF16 (written).
#pragma once
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common.cuh"

static_assert(std::endian::native == std::endian::little, "safetensors.h reads little-endian data in place");

namespace safetensors {

enum class DType { F32, F16, BF16 };
inline const char* dtype_name(DType d) { return d == DType::F32 ? "F32" : d == DType::F16 ? "F16" : "BF16"; }
inline size_t dtype_bytes(DType d) { return d == DType::F32 ? 4 : 2; }

// Half precision (IEEE binary16: 1 sign, 5 exponent, 10 mantissa bits) to float, every case exact.
inline float f16_to_f32(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (mant << 13);                  // inf / NaN
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13);        // normal: rebias 15 → 127
    else if (mant == 0) bits = sign;                                           // ±0
    else {                                                                      // subnormal: mant · 2^-24
        float f = static_cast<float>(mant) * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    return std::bit_cast<float>(bits);
}
// bfloat16 is the top half of a float32.
inline float bf16_to_f32(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }
// float to bfloat16, rounded to nearest, ties to even (what torch's .to(torch.bfloat16) does); NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
    return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;  // byte range in the data buffer
    size_t numel() const {
        size_t n = 1;
        for (int64_t d : shape) n *= static_cast<size_t>(d);
        return n;
    }
};

inline std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

class Reader {
public:
    // Reads and validates a whole file.
    static Reader load(const std::string& path) {
        ::File f(path, "rb");
        std::vector<uint8_t> bytes(f.size());
        f.read(bytes.data(), bytes.size(), "safetensors file");
        return parse(std::move(bytes), path);
    }

    // Validates `bytes` as a safetensors file; `where` names it in errors.
    static Reader parse(std::vector<uint8_t> bytes, const std::string& where) {
        Reader r;
        r.where_ = where;
        r.bytes_ = std::move(bytes);
        auto fail = [&](const std::string& m) -> void { throw std::runtime_error("safetensors " + where + ": " + m); };
        const size_t size = r.bytes_.size();
        if (size < 8)
            fail("only " + std::to_string(size) + " bytes; a safetensors file starts with an 8-byte header length");
        uint64_t n = 0;
        std::memcpy(&n, r.bytes_.data(), 8);
        if (n > size - 8)
            fail("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
                 " bytes): truncated, or not a safetensors file");
        r.data_offset_ = 8 + static_cast<size_t>(n);
        const size_t data_bytes = size - r.data_offset_;
        nlohmann::json header;
        try {
            header = nlohmann::json::parse(r.bytes_.begin() + 8,
                                           r.bytes_.begin() + static_cast<std::ptrdiff_t>(r.data_offset_));
        } catch (const nlohmann::json::exception& e) {
            fail(std::string("the header is not valid JSON (") + e.what() + ")");
        }
        if (!header.is_object()) fail("the header is JSON but not an object of tensors");
        for (auto it = header.begin(); it != header.end(); ++it) {
            const std::string& name = it.key();
            const nlohmann::json& e = it.value();
            if (name == "__metadata__") {
                if (!e.is_object()) fail("__metadata__ is not an object");
                for (auto m = e.begin(); m != e.end(); ++m) {
                    if (!m.value().is_string()) fail("__metadata__[\"" + m.key() + "\"] is not a string");
                    r.metadata_[m.key()] = m.value().get<std::string>();
                }
                continue;
            }
            auto bad = [&](const std::string& m) { fail("tensor '" + name + "': " + m); };
            if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
                bad("entry must be an object with dtype, shape and data_offsets");
            TensorInfo t;
            t.name = name;
            const nlohmann::json& dt = e["dtype"];
            if (!dt.is_string()) bad("dtype is not a string");
            const std::string d = dt.get<std::string>();
            if (d == "F32") t.dtype = DType::F32;
            else if (d == "F16") t.dtype = DType::F16;
            else if (d == "BF16") t.dtype = DType::BF16;
            else bad("dtype '" + d + "' is not supported (F32, F16, BF16)");
            const nlohmann::json& sh = e["shape"];
            if (!sh.is_array()) bad("shape is not an array");
            // numel × bytes per element, overflow-checked (a hostile shape must not wrap around)
            size_t nbytes = dtype_bytes(t.dtype);
            for (const auto& x : sh) {
                if (!x.is_number_integer() || x.get<int64_t>() < 0)
                    bad("shape " + sh.dump() + " must hold non-negative integers");
                uint64_t dim = x.get<uint64_t>();
                if (dim != 0 && nbytes > std::numeric_limits<size_t>::max() / dim)
                    bad("shape " + sh.dump() + " overflows");
                nbytes *= dim;
                t.shape.push_back(static_cast<int64_t>(dim));
            }
            const nlohmann::json& off = e["data_offsets"];
            if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
                bad("data_offsets " + off.dump() + " must be [begin, end] with non-negative integers");
            uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
            if (begin > end || end > data_bytes)
                bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                    "] are out of range (the data buffer has " + std::to_string(data_bytes) + " bytes)");
            if (end - begin != nbytes)
                bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] hold " +
                    std::to_string(end - begin) + " bytes, but shape " + shape_string(t.shape) + " of " + d +
                    " needs " + std::to_string(nbytes));
            t.begin = static_cast<size_t>(begin);
            t.end = static_cast<size_t>(end);
            r.tensors_[name] = std::move(t);
        }
        // The ranges, in order, must tile the buffer: no overlap, no hole, nothing after the last one.
        std::vector<const TensorInfo*> by_offset;
        for (const auto& [name, t] : r.tensors_) by_offset.push_back(&t);
        std::sort(by_offset.begin(), by_offset.end(),
                  [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
        size_t expected = 0;
        for (size_t i = 0; i < by_offset.size(); i++) {
            const TensorInfo& t = *by_offset[i];
            if (t.begin < expected)
                fail("tensors '" + by_offset[i - 1]->name + "' and '" + t.name + "' overlap (bytes " +
                     std::to_string(t.begin) + ".." + std::to_string(expected) + ")");
            if (t.begin > expected)
                fail("bytes " + std::to_string(expected) + ".." + std::to_string(t.begin) +
                     " of the data buffer belong to no tensor");
            expected = t.end;
        }
        if (expected != data_bytes)
            fail("the data buffer has " + std::to_string(data_bytes) + " bytes but the tensors end at " +
                 std::to_string(expected));
        return r;
    }

    const std::string& where() const { return where_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
    bool has(const std::string& name) const { return tensors_.count(name) != 0; }

    const TensorInfo& info(const std::string& name) const {
        auto it = tensors_.find(name);
        if (it == tensors_.end())
            throw std::runtime_error("safetensors " + where_ + ": no tensor named '" + name + "'");
        return it->second;
    }

    // The tensor as float32, after checking its shape is `expected` (empty: any shape).
    std::vector<float> get(const std::string& name, const std::vector<int64_t>& expected = {}) const {
        const TensorInfo& t = info(name);
        if (!expected.empty() && t.shape != expected)
            throw std::runtime_error("safetensors " + where_ + ": tensor '" + name + "' has shape " +
                                     shape_string(t.shape) + ", expected " + shape_string(expected));
        std::vector<float> out(t.numel());
        const uint8_t* src = bytes_.data() + data_offset_ + t.begin;
        for (size_t i = 0; i < out.size(); i++) {
            if (t.dtype == DType::F32) std::memcpy(&out[i], src + 4 * i, 4);
            else {
                uint16_t h;
                std::memcpy(&h, src + 2 * i, 2);
                out[i] = t.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
            }
        }
        return out;
    }

private:
    std::string where_;
    std::vector<uint8_t> bytes_;
    size_t data_offset_ = 0;
    std::map<std::string, TensorInfo> tensors_;
    std::map<std::string, std::string> metadata_;
};

// A tensor to write: float32 values in row-major order.
struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> values;
};

// The bytes of a safetensors file holding `tensors` as F32 or BF16 (rounded to nearest even), in the order given.
// The header is padded with spaces to a multiple of 8 bytes so the data buffer starts aligned (as the reference
// writer does).
inline std::vector<uint8_t> serialize(const std::vector<Tensor>& tensors,
                                      const std::map<std::string, std::string>& metadata, DType dtype = DType::F32) {
    if (dtype == DType::F16) throw std::runtime_error("safetensors write: F16 is not written (F32 or BF16)");
    const size_t bytes = dtype_bytes(dtype);
    nlohmann::ordered_json header;
    if (!metadata.empty()) header["__metadata__"] = metadata;
    size_t offset = 0;
    for (const Tensor& t : tensors) {
        size_t n = 1;
        for (int64_t d : t.shape) n *= static_cast<size_t>(d);
        if (n != t.values.size())
            throw std::runtime_error("safetensors write: tensor '" + t.name + "' has " +
                                     std::to_string(t.values.size()) + " values but shape " + shape_string(t.shape));
        if (header.contains(t.name))
            throw std::runtime_error("safetensors write: tensor '" + t.name + "' appears twice");
        header[t.name] = {
            {"dtype", dtype_name(dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes * n}}};
        offset += bytes * n;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::vector<uint8_t> out(8 + text.size() + offset);
    uint64_t n = text.size();
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, text.data(), text.size());
    uint8_t* dst = out.data() + 8 + text.size();
    for (const Tensor& t : tensors) {
        if (t.values.empty()) continue;  // memcpy from a null data() is undefined even for 0 bytes
        if (dtype == DType::F32) std::memcpy(dst, t.values.data(), 4 * t.values.size());
        else
            for (size_t i = 0; i < t.values.size(); i++) {
                uint16_t b = f32_to_bf16(t.values[i]);
                std::memcpy(dst + 2 * i, &b, 2);
            }
        dst += bytes * t.values.size();
    }
    return out;
}

inline void save(const std::string& path, const std::vector<Tensor>& tensors,
                 const std::map<std::string, std::string>& metadata, DType dtype = DType::F32) {
    std::vector<uint8_t> bytes = serialize(tensors, metadata, dtype);
    write_file_atomically(path, [&](::File& f) { f.write(bytes.data(), bytes.size()); });
}

}  // namespace safetensors
