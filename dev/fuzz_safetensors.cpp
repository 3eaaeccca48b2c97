// fuzz_safetensors.cpp — libFuzzer target for safetensors.h's reader (`make fuzz-safetensors`).
// Any input must either parse or throw std::runtime_error; ASan/UBSan catch every out-of-bounds read,
// overflow or leak on the way. A file that parses is read back tensor by tensor (every byte range is
// touched) and re-serialized, and the copy must parse to the same tensors.
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        auto r = safetensors::Reader::parse(std::vector<uint8_t>(data, data + size), "<fuzz>");
        std::vector<safetensors::Tensor> all;
        for (const auto& [name, t] : r.tensors()) all.push_back({name, t.shape, r.get(name, t.shape)});
        auto again = safetensors::Reader::parse(safetensors::serialize(all, r.metadata()), "<fuzz round trip>");
        if (again.tensors().size() != all.size()) __builtin_trap();
        for (const auto& t : all) {
            std::vector<float> v = again.get(t.name, t.shape);
            if (v.size() != t.values.size() ||
                (!v.empty() && std::memcmp(v.data(), t.values.data(), 4 * v.size()) != 0))
                __builtin_trap();
        }
    } catch (const std::runtime_error&) {
    }
    return 0;
}
