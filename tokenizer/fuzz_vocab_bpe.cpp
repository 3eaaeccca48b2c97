// libFuzzer target: the vocab.bpe loader (make fuzz). The input is a vocab.bpe;
// encoder.json is the small fixture's (test/fixtures/tokenizer_small). Loading
// must either succeed or throw std::runtime_error; a loaded tokenizer must
// round-trip text (any merge order is a valid, if odd, tokenizer).
#include "bpe.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

static std::string g_encoder;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* d = getenv("TOK_FUZZ_FIXTURE");
    g_encoder = bpe::read_file(std::string(d && *d ? d : "test/fixtures/tokenizer_small") + "/encoder.json");
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view merges((const char*)data, size);
    try {
        bpe::Tokenizer tok = bpe::Tokenizer::from_strings(g_encoder, merges, "fuzz");
        for (std::string_view text : {std::string_view("The tokenizer splits text into pieces, 2024! caf\xC3\xA9"),
                                      merges.substr(0, 256)}) {
            if (tok.decode(tok.encode_ordinary(text)) != text) __builtin_trap();
        }
    } catch (const std::runtime_error&) {
    }
    return 0;
}
