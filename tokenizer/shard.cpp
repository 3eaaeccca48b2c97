// ----------------------------------------------------------------------------
// Token shards in llm.c's .bin format
//   header: 256 int32 (1024 bytes): [0] magic, [1] version, [2] token count, rest 0
//   body:   count tokens, uint16 (magic 20240520, version 1: vocab <= 65536)
//                      or uint32 (magic 20240801, version 7: larger vocabularies)
//   little-endian, as llm.c writes it with numpy on x86.
// ----------------------------------------------------------------------------
#include "bpe.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace bpe {

namespace {
[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

struct File {                                  // closes on every path out
    FILE* f;
    explicit File(FILE* f) : f(f) {}
    ~File() { if (f) fclose(f); }
};
} // namespace

void write_shard(const std::string& path, std::span<const int> tokens, int vocab_size) {
    if (vocab_size <= 0)
        fail("write_shard " + path + ": vocab_size " + std::to_string(vocab_size) + " must be positive");
    if (tokens.size() > (size_t)INT32_MAX)
        fail("write_shard " + path + ": " + std::to_string(tokens.size()) +
             " tokens do not fit the header's int32 count; write several shards");
    const bool wide = vocab_size > 65536;
    int32_t header[kShardHeaderBytes / 4] = {};
    header[0] = wide ? kShardMagicU32 : kShardMagicU16;
    header[1] = wide ? kShardVersionU32 : kShardVersionU16;
    header[2] = (int32_t)tokens.size();
    // validate and pack the tokens first, so a bad id leaves no half-written file
    std::vector<uint16_t> narrow;
    std::vector<uint32_t> full;
    if (wide) full.resize(tokens.size()); else narrow.resize(tokens.size());
    for (size_t i = 0; i < tokens.size(); i++) {
        int t = tokens[i];
        if (t < 0 || t >= vocab_size)
            fail("write_shard " + path + ": token " + std::to_string(t) + " at position " + std::to_string(i) +
                 " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
        if (wide) full[i] = (uint32_t)t; else narrow[i] = (uint16_t)t;
    }
    File f(fopen(path.c_str(), "wb"));
    if (!f.f) fail("write_shard " + path + ": cannot create (" + strerror(errno) + ")");
    bool ok = fwrite(header, 1, sizeof header, f.f) == sizeof header;
    // (an empty shard writes no tokens: fwrite must not get the null data() of an empty vector)
    if (wide && !full.empty()) ok = ok && fwrite(full.data(), 4, full.size(), f.f) == full.size();
    if (!wide && !narrow.empty()) ok = ok && fwrite(narrow.data(), 2, narrow.size(), f.f) == narrow.size();
    ok = (fclose(f.f) == 0) && ok;
    f.f = nullptr;
    if (!ok) fail("write_shard " + path + ": write failed (" + strerror(errno) + "); is the disk full?");
}

std::vector<int> read_shard(const std::string& path) {
    File f(fopen(path.c_str(), "rb"));
    if (!f.f) fail(path + ": cannot open (" + strerror(errno) + ")");
    int32_t header[kShardHeaderBytes / 4];
    if (fread(header, 1, sizeof header, f.f) != sizeof header)
        fail(path + ": shorter than the 1024-byte header of a token shard; is it a .bin written by tok prepare?");
    const int magic = header[0], version = header[1], count = header[2];
    int width;
    if (magic == kShardMagicU16 && version == kShardVersionU16) width = 2;
    else if (magic == kShardMagicU32 && version == kShardVersionU32) width = 4;
    else if (magic == kShardMagicU16 || magic == kShardMagicU32)
        fail(path + ": magic " + std::to_string(magic) + " with version " + std::to_string(version) +
             " (expected version " + std::to_string(magic == kShardMagicU16 ? kShardVersionU16 : kShardVersionU32) +
             "); written by a newer or other program?");
    else
        fail(path + ": magic " + std::to_string(magic) + " is not a token shard (expected " +
             std::to_string(kShardMagicU16) + " or " + std::to_string(kShardMagicU32) +
             "); is it a .bin written by tok prepare or llm.c?");
    if (count < 0)
        fail(path + ": negative token count " + std::to_string(count) + " in the header; the file is corrupt");
    if (fseek(f.f, 0, SEEK_END) != 0) fail(path + ": cannot seek (" + strerror(errno) + ")");
    long size = ftell(f.f);
    long expected = (long)kShardHeaderBytes + (long)count * width;
    if (size != expected)
        fail(path + ": the header says " + std::to_string(count) + " tokens of " + std::to_string(width) +
             " bytes, so the file should be " + std::to_string(expected) + " bytes, but it is " +
             std::to_string(size) + "; the file is truncated or corrupt, write it again");
    fseek(f.f, (long)kShardHeaderBytes, SEEK_SET);
    std::vector<int> tokens(count);
    if (width == 2) {
        std::vector<uint16_t> buf(count);
        if (count > 0 && fread(buf.data(), 2, buf.size(), f.f) != buf.size()) fail(path + ": read error");
        for (int i = 0; i < count; i++) tokens[i] = buf[i];
    } else {
        std::vector<uint32_t> buf(count);
        if (count > 0 && fread(buf.data(), 4, buf.size(), f.f) != buf.size()) fail(path + ": read error");
        for (int i = 0; i < count; i++) {
            if (buf[i] > (uint32_t)INT32_MAX)
                fail(path + ": token " + std::to_string(buf[i]) + " at position " + std::to_string(i) +
                     " is too large; the file is corrupt");
            tokens[i] = (int)buf[i];
        }
    }
    return tokens;
}

} // namespace bpe
