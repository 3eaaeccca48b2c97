// libFuzzer target: the GPT-2 encoder/decoder on arbitrary bytes (make fuzz).
// Invariants: pieces cover the input; decode(encode(x)) == x for both the
// ordinary and the special-token path; the streaming decoder returns valid
// UTF-8 and, for valid UTF-8 input, exactly the input.
#include "bpe.h"

#include <cstdlib>
#include <cstring>
#include <string>

static const bpe::Tokenizer* g_tok;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* d = getenv("GPTCU_DATA");
    static bpe::Tokenizer tok = bpe::Tokenizer::load(std::string(d && *d ? d : "../shared/data") + "/gpt2");
    g_tok = &tok;
    return 0;
}

static bool valid_utf8(const std::string& s) {
    for (size_t i = 0; i < s.size();) {
        unsigned char c = (unsigned char)s[i];
        int need = c < 0x80                   ? 1
                   : (c >= 0xC2 && c <= 0xDF) ? 2
                   : (c >= 0xE0 && c <= 0xEF) ? 3
                   : (c >= 0xF0 && c <= 0xF4) ? 4
                                              : 0;
        if (need == 0 || i + need > s.size()) return false;
        for (int k = 1; k < need; k++) if (((unsigned char)s[i + k] & 0xC0) != 0x80) return false;
        unsigned char d = (unsigned char)s[i + 1];
        if (need == 3 && ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F))) return false;
        if (need == 4 && ((c == 0xF0 && d < 0x90) || (c == 0xF4 && d > 0x8F))) return false;
        i += need;
    }
    return true;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text((const char*)data, size);
    const bpe::Tokenizer& tok = *g_tok;
    std::string joined;
    for (std::string_view p : bpe::pretokenize(text)) {
        if (p.empty()) __builtin_trap();
        joined += p;
    }
    if (joined != text) __builtin_trap();
    std::vector<int> ids = tok.encode_ordinary(text);
    if (tok.decode(ids) != text) __builtin_trap();
    std::vector<int> sp = tok.encode(text);
    if (tok.decode(sp) != text) __builtin_trap();
    bpe::StreamDecoder dec(tok);
    std::string streamed;
    for (int id : ids) {
        std::string piece = dec.push(id);
        if (!valid_utf8(piece)) __builtin_trap();
        streamed += piece;
    }
    std::string tail = dec.flush();
    if (!valid_utf8(tail)) __builtin_trap();
    streamed += tail;
    if (valid_utf8(text) && streamed != text) __builtin_trap();
    return 0;
}
