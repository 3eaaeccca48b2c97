// ----------------------------------------------------------------------------
// dev/bench_tokenizer — encode throughput of tokenizer/ vs tiktoken, same machine, same run
//   make bench-tokenizer        (tiktoken's side: dev/bench_tokenizer.py; pip install tiktoken numpy)
// Corpora: Tiny Shakespeare (1.1 MB) and a ~100 MB corpus generated here into
// build/bench/ (lines of Tiny Shakespeare and heldout.txt, plus made-up words,
// numbers and non-ASCII lines so that BPE and the cache see new words too).
// Each number: MB/s, median of N runs after one warm-up. Every run starts with an
// empty word cache (two Tokenizer objects, alternated), so nothing is carried
// between runs. "ids equal" compares token count and a position-weighted checksum
// with tiktoken's.
// Options: --repeats N (default 3), --corpus-mb M (default 100), --no-tiktoken.
// ----------------------------------------------------------------------------
#include "bpe.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

std::string data_dir() {
    const char* d = getenv("GPTCU_DATA");
    return d && *d ? d : "../shared/data";
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

uint64_t checksum(const std::vector<int>& ids) {
    uint64_t s = 0;
    for (size_t i = 0; i < ids.size(); i++) s += (uint64_t)ids[i] * (uint64_t)(i % 1000003 + 1);
    return s;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        nl = nl == std::string::npos ? text.size() : nl + 1;
        out.push_back(text.substr(pos, nl - pos));
        pos = nl;
    }
    return out;
}

// ~target_bytes of text, deterministic (seeded): 80% lines of real English,
// 10% made-up words and numbers, 10% lines in other scripts.
std::string generate_corpus(size_t target_bytes) {
    std::vector<std::string> lines = lines_of(bpe::read_file(data_dir() + "/tinyshakespeare.txt"));
    std::vector<std::string> more = lines_of(bpe::read_file(data_dir() + "/heldout.txt"));
    lines.insert(lines.end(), more.begin(), more.end());
    const char* syllables[] = {"ka", "zu", "mor", "tel", "qui", "rax", "on", "ve", "strin", "plo", "ex", "gh",
                               "ith", "yr", "sco", "bl", "ae", "dre", "nu", "fy"};
    const char* foreign[] = {"\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",
                             "\xD0\xBC\xD0\xB8\xD1\x80",
                             "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",
                             "\xE4\xB8\xAD\xE6\x96\x87",
                             "caf\xC3\xA9",
                             "na\xC3\xAFve",
                             "Stra\xC3\x9F"
                             "e",
                             "\xE1\x9E\x9F\xE1\x9E\xBD\xE1\x9E\x9F",
                             "Vi\xE1\xBB\x87t",
                             "\xF0\x9F\x8C\x8D",
                             "\xCE\xB1\xCE\xB2\xCE\xB3",
                             "\xD8\xB3\xD9\x84\xD8\xA7\xD9\x85"};
    std::mt19937 rng(2026);
    std::string out;
    out.reserve(target_bytes + 4096);
    while (out.size() < target_bytes) {
        unsigned r = rng() % 10;
        if (r < 8) {
            out += lines[rng() % lines.size()];
        } else if (r == 8) {
            for (int w = 0, n = 3 + (int)(rng() % 8); w < n; w++) {
                out += ' ';
                if (rng() % 4 == 0) out += std::to_string(rng() % 100000);
                else for (int s = 0, k = 1 + (int)(rng() % 4); s < k; s++) out += syllables[rng() % 20];
                if (rng() % 5 == 0) out += ",";
            }
            out += ".\n";
        } else {
            for (int w = 0, n = 2 + (int)(rng() % 6); w < n; w++) {
                out += foreign[rng() % 12];
                out += ' ';
            }
            out += "\n";
        }
    }
    return out;
}

struct Row {
    std::string corpus;
    size_t bytes = 0, tokens = 0;
    uint64_t sum = 0;
    double ours1 = 0, oursN = 0, theirs1 = 0, theirsN = 0, decode = 0;
    bool have_theirs = false;
    size_t their_tokens = 0;
    uint64_t their_sum = 0;
};

template <class F>
double median_mbps(size_t bytes, int repeats, F&& run) {
    run();                                                   // warm-up
    std::vector<double> t;
    for (int i = 0; i < repeats; i++) {
        double t0 = now_s();
        run();
        t.push_back(now_s() - t0);
    }
    std::sort(t.begin(), t.end());
    return bytes / 1e6 / t[t.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
    int repeats = 3;
    size_t corpus_mb = 100;
    bool tiktoken = true;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--corpus-mb") && i + 1 < argc) corpus_mb = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--no-tiktoken")) tiktoken = false;
        else { fprintf(stderr, "usage: bench_tokenizer [--repeats N] [--corpus-mb M] [--no-tiktoken]\n"); return 2; }
    }
    const int threads = (int)std::max(1u, std::thread::hardware_concurrency());
    const std::string vocab = data_dir() + "/gpt2";
    bpe::Tokenizer tok_a = bpe::Tokenizer::load(vocab), tok_b = bpe::Tokenizer::load(vocab);

    std::filesystem::create_directories("build/bench");
    const std::string gen_path = "build/bench/tokenizer_corpus_" + std::to_string(corpus_mb) + "MB.txt";
    if (!std::filesystem::exists(gen_path)) {
        std::string g = generate_corpus(corpus_mb * 1000000);
        FILE* f = fopen(gen_path.c_str(), "wb");
        if (!f || fwrite(g.data(), 1, g.size(), f) != g.size()) { perror(gen_path.c_str()); return 1; }
        fclose(f);
    }
    std::vector<std::pair<std::string, std::string>> corpora = {
        {"tinyshakespeare", data_dir() + "/tinyshakespeare.txt"},
        {"generated " + std::to_string(corpus_mb) + " MB", gen_path}};

    std::vector<Row> rows;
    for (auto& [name, path] : corpora) {
        Row r;
        r.corpus = name;
        std::string text = bpe::read_file(path);
        r.bytes = text.size();
        int flip = 0;
        auto pick = [&]() -> const bpe::Tokenizer& { return (flip++ & 1) ? tok_b : tok_a; };
        std::vector<int> ids = tok_a.encode_ordinary(text);
        r.tokens = ids.size();
        r.sum = checksum(ids);
        r.ours1 = median_mbps(r.bytes, repeats, [&] { pick().encode_ordinary(text); });
        r.oursN = median_mbps(r.bytes, repeats, [&] { pick().encode_ordinary_parallel(text, threads); });
        if (tok_a.encode_ordinary_parallel(text, threads) != ids) {
            fprintf(stderr, "parallel != serial!\n");
            return 1;
        }
        r.decode = median_mbps(r.bytes, repeats, [&] { tok_a.decode(ids); });
        rows.push_back(r);
        fprintf(stderr, "ours done: %s\n", name.c_str());
    }

    if (tiktoken) {
        std::string cmd = "python3 dev/bench_tokenizer.py --vocab " + vocab + " --threads " + std::to_string(threads) +
                          " --repeats " + std::to_string(repeats);
        for (auto& c : corpora) cmd += " " + c.second;
        FILE* p = popen(cmd.c_str(), "r");
        char line[1024];
        size_t i = 0;
        while (p && fgets(line, sizeof line, p) && i < rows.size()) {
            char file[512];
            unsigned long long bytes, tokens, sum;
            double t1, tn;
            if (sscanf(line, "%511s %llu %llu %llu %lf %lf", file, &bytes, &tokens, &sum, &t1, &tn) == 6) {
                Row& r = rows[i++];
                r.have_theirs = true;
                r.their_tokens = tokens; r.their_sum = sum; r.theirs1 = t1; r.theirsN = tn;
            }
        }
        if (p) pclose(p);
        if (i < rows.size()) fprintf(stderr, "tiktoken numbers missing (pip install tiktoken numpy?)\n");
    }

    char cpu[256] = "unknown CPU";
    if (FILE* f = fopen("/proc/cpuinfo", "r")) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10)) {
                snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
                cpu[strcspn(cpu, "\n")] = 0;
                break;
            }
        fclose(f);
    }
    printf("GPT-2 BPE encode throughput (MB/s, median of %d after warm-up); CPU: %s, %d threads available\n",
           repeats, cpu, threads);
    printf("%-22s %11s %10s %7s %10s %13s %7s %9s %12s\n", "corpus", "bytes", "tokens", "threads", "ours MB/s",
           "tiktoken MB/s", "ratio", "ids equal", "decode MB/s");
    for (const Row& r : rows) {
        for (int t : {1, threads}) {
            double ours = t == 1 ? r.ours1 : r.oursN, theirs = t == 1 ? r.theirs1 : r.theirsN;
            char th[32] = "n/a", ratio[32] = "n/a", eq[8] = "n/a";
            if (r.have_theirs) {
                snprintf(th, sizeof th, "%.1f", theirs);
                snprintf(ratio, sizeof ratio, "%.1fx", ours / theirs);
                snprintf(eq, sizeof eq, "%s", r.tokens == r.their_tokens && r.sum == r.their_sum ? "yes" : "NO");
            }
            char dec[32] = "";
            if (t == 1) snprintf(dec, sizeof dec, "%.0f", r.decode);
            printf("%-22s %11zu %10zu %7d %10.1f %13s %7s %9s %12s\n", r.corpus.c_str(), r.bytes, r.tokens, t, ours, th,
                   ratio, eq, dec);
            if (threads == 1) break;
        }
    }
    // training, for the record
    std::string ts = bpe::read_file(data_dir() + "/tinyshakespeare.txt");
    double t0 = now_s();
    bpe::TrainedVocab v = bpe::train_bpe({ts}, 4096);
    printf("train_bpe: Tiny Shakespeare -> %zu tokens in %.2f s\n", v.tokens.size(), now_s() - t0);
    return 0;
}
