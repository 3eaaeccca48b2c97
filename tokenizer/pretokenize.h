// ----------------------------------------------------------------------------
// GPT-2 pre-tokenization, hand-written (private to tokenizer/; bpe.h has the API)
//
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// The regex is tried alternative by alternative at the current position
// (leftmost-first), each alternative greedy. Written out as a scanner:
//   1. "'" + s|t|m|d or re|ve|ll (lowercase only)           -> contraction
//   2. optional " " then a run of one class L, N or O         -> word / number / punctuation
//      (O = other = not space, not letter, not number)
//   3. a whitespace run [i, j):  j == end               -> all of it
//                                 else, if 2+ characters -> all but the last character
//                                       (\s+(?!\S) backtracks one character so the
//                                        last space can join the next word in rule 2)
//                                 else                   -> the one character (\s+)
// cost: one pass, O(bytes); ASCII is classified by a 128-entry table, other code
// points by a 64K table (BMP) or a binary search over 831 ranges (astral).
// ----------------------------------------------------------------------------
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace bpe::detail {

enum CharClass : uint8_t { O = 0, L = 1, N = 2, S = 3 };

// class of code point cp (any value; non-characters and surrogates are O)
CharClass classify_codepoint(uint32_t cp);

// ASCII classes: letters, digits, and \t \n \v \f \r space
inline constexpr CharClass ascii_class(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ? L
         : (c >= '0' && c <= '9')                             ? N
         : (c == ' ' || (c >= 9 && c <= 13))                  ? S
                                                              : O;
}

// Decodes one UTF-8 character at p (p < end): returns its class and sets *len to
// its byte length. Invalid UTF-8 (bad lead, missing continuation, overlong,
// surrogate, > U+10FFFF) is one byte of class O.
inline CharClass char_at(const unsigned char* p, const unsigned char* end, int* len) {
    unsigned char c = *p;
    if (c < 0x80) { *len = 1; return ascii_class(c); }
    size_t left = (size_t)(end - p);
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        if (left < 2 || (p[1] & 0xC0) != 0x80) { *len = 1; return O; }
        cp = ((c & 0x1Fu) << 6) | (p[1] & 0x3Fu);
        *len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) { *len = 1; return O; }
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F)) { *len = 1; return O; }
        cp = ((c & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
        *len = 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) {
            *len = 1; return O;
        }
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] > 0x8F)) { *len = 1; return O; }
        cp = ((c & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
        *len = 4;
    } else {
        *len = 1; return O;
    }
    return classify_codepoint(cp);
}

// End of the run of class k characters that starts at p.
inline const unsigned char* run_end(const unsigned char* p, const unsigned char* end, CharClass k) {
    while (p < end) {
        if (*p < 0x80) {
            if (ascii_class(*p) != k) break;
            ++p;
        } else {
            int len;
            if (char_at(p, end, &len) != k) break;
            p += len;
        }
    }
    return p;
}

// Length in bytes of the piece that starts at p (p < end).
inline size_t next_piece(const unsigned char* p, const unsigned char* end) {
    const unsigned char* s = p;
    if (*p == '\'' && end - p >= 2) {                         // 1. contractions
        unsigned char a = p[1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if (end - p >= 3) {
            unsigned char b = p[2];
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
        }
    }
    int len;
    CharClass k = char_at(p, end, &len);
    if (*p == ' ' && end - p >= 2) {                          // 2. " " + L/N/O run
        int len1;
        CharClass k1 = char_at(p + 1, end, &len1);
        if (k1 != S) return (size_t)(run_end(p + 1 + len1, end, k1) - s);
    }
    if (k != S) return (size_t)(run_end(p + len, end, k) - s); // 2. L/N/O run
    // 3. whitespace run; remember where its last character starts
    const unsigned char* last = p;
    const unsigned char* q = p + len;
    while (q < end) {
        int l;
        if (*q < 0x80) { if (ascii_class(*q) != S) break; l = 1; }
        else if (char_at(q, end, &l) != S) break;
        last = q;
        q += l;
    }
    if (q == end) return (size_t)(q - s);
    if (last > s) return (size_t)(last - s);
    return (size_t)(q - s);
}

// Calls on_piece(std::string_view) for every piece, in order.
template <class F>
inline void for_each_piece(std::string_view text, F&& on_piece) {
    const unsigned char* p = (const unsigned char*)text.data();
    const unsigned char* end = p + text.size();
    while (p < end) {
        size_t n = next_piece(p, end);
        on_piece(std::string_view((const char*)p, n));
        p += n;
    }
}

} // namespace bpe::detail
