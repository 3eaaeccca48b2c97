// libFuzzer target: the encoder.json loader (make fuzz). The input is an
// encoder.json; vocab.bpe is the small fixture's (test/fixtures/tokenizer_small).
// Loading must either succeed or throw std::runtime_error; a loaded tokenizer
// must round-trip text.
#include "bpe.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

static std::string g_merges;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* d = getenv("TOK_FUZZ_FIXTURE");
    g_merges = bpe::read_file(std::string(d && *d ? d : "test/fixtures/tokenizer_small") + "/vocab.bpe");
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view json((const char*)data, size);
    for (std::string_view merges : {std::string_view(g_merges), std::string_view("#version: 0.2\n")}) {
        try {
            bpe::Tokenizer tok = bpe::Tokenizer::from_strings(json, merges, "fuzz");
            for (std::string_view text :
                 {std::string_view("The tokens, 2024! caf\xC3\xA9 \xF0\x9F\x8C\x8D"), json.substr(0, 256)}) {
                if (tok.decode(tok.encode(text)) != text) __builtin_trap();
                if (tok.decode(tok.encode_ordinary(text)) != text) __builtin_trap();
            }
        } catch (const std::runtime_error&) {
        }
    }
    return 0;
}
