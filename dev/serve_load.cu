// dev/serve_load.cu — load benchmark of `infer_gpt --serve` (make bench-serve): the same N requests served
// offline (`infer_gpt --requests`, all known up front) and online through HTTP by C concurrent streaming
// clients (closed loop: each sends its next request when the previous one ends), C = 1, 4, 16, 64.
// Prints generated tokens/s, time to first token and inter-token latency (p50, p99, seen by the client).
//
//   build/cpu/dev/serve_load [--model PATH] [--program ./infer_gpt_cpu] [--requests 64] [--max-tokens 64]
//                            [--max-seqs 16] [--concurrency 1,4,16,64]
// Without --model it writes a random GPT-2 (4 layers, C = 256, context 512, GPT-2's tokenizer) to /tmp:
// the serving overheads, not the text, are measured. Prompts are slices of Tiny Shakespeare (8-160 tokens).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>

#include "checkpoint.h"
#include "gpt.cuh"
#include "tokenizer/bpe.h"
#include "dev/serve_client.h"

namespace fs = std::filesystem;
using namespace serve_client;

static double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

int main(int argc, char** argv) try {
    std::string model, program = "./infer_gpt_cpu", conc = "1,4,16,64", tok_dir = "../shared/data/gpt2";
    int n = 64, max_tokens = 64, max_seqs = 16;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i], v = argv[i + 1];
        if (a == "--model") model = v;
        else if (a == "--program") program = v;
        else if (a == "--requests") n = std::stoi(v);
        else if (a == "--max-tokens") max_tokens = std::stoi(v);
        else if (a == "--max-seqs") max_seqs = std::stoi(v);
        else if (a == "--concurrency") conc = v;
        else {
            std::fprintf(stderr, "serve_load: unknown flag %s (see the top of dev/serve_load.cu)\n", a.c_str());
            return 1;
        }
    }
    std::string dir = (fs::temp_directory_path() / ("gptcu_serve_load_" + std::to_string(getpid()))).string();
    fs::create_directories(dir);
    bpe::Tokenizer tok = bpe::Tokenizer::load(tok_dir);
    if (model.empty()) {
        GPTConfig c;
        c.vocab_size = tok.vocab_size();
        c.padded_vocab_size = padded_vocab(c.vocab_size);
        c.max_seq_len = 512;
        c.n_layer = 4;
        c.n_embd = 256;
        c.n_head = c.n_kv_head = 4;
        c.ffn_hidden = 4 * c.n_embd;
        GPT<HostOps> m(c);
        m.init_random(1);
        model = dir + "/model.bin";
        write_checkpoint(model, c, tokenizer_info(tok_dir, tok), nlohmann::json::object(), m.get_parameters(), {}, {});
    }
    // the requests: greedy, fixed max_tokens, prompts of 8..160 tokens from Tiny Shakespeare
    std::ifstream text_file("../shared/data/tinyshakespeare.txt");
    std::string text((std::istreambuf_iterator<char>(text_file)), std::istreambuf_iterator<char>());
    if (text.size() < 100000) throw std::runtime_error("../shared/data/tinyshakespeare.txt is missing or short");
    Rng rng(7);
    std::vector<json> reqs;
    std::ofstream rf(dir + "/requests.jsonl");
    for (int i = 0; i < n; i++) {
        size_t at = rng.below(static_cast<uint32_t>(text.size() - 2000));
        std::vector<int> ids = tok.encode_ordinary(text.substr(at, 1000));
        ids.resize(8 + rng.below(153));
        json r = {{"prompt", tok.decode(ids)}, {"max_tokens", max_tokens}, {"temperature", 0}};
        reqs.push_back(r);
        json line = r;
        line["id"] = i;
        rf << line.dump() << "\n";
    }
    rf.close();
    std::string flags = " --max-seqs " + std::to_string(max_seqs);
    char host[256] = "";
    gethostname(host, sizeof host);
    std::printf(
        "serve_load: %d requests x %d new tokens (greedy), prompts 8-160 tokens, --max-seqs %d, model %s; %s, %u "
        "threads\n",
        n, max_tokens, max_seqs, model.c_str(), host, std::thread::hardware_concurrency());
    // offline: all requests known up front; infer_gpt reports its own generation time (after loading)
    std::string off;
    FILE* pipe = popen(
        (program + " --model " + model + flags + " --requests " + dir + "/requests.jsonl --out /dev/null 2>&1").c_str(),
        "r");
    char buf[4096];
    for (size_t k; pipe && (k = std::fread(buf, 1, sizeof buf, pipe)) > 0;) off.append(buf, k);
    std::smatch m;
    if (!pipe || pclose(pipe) != 0 || !std::regex_search(off, m, std::regex("([0-9.]+) tok/s")))
        throw std::runtime_error("offline run failed:\n" + off);
    double offline = std::stod(m[1]);
    std::printf("%-22s %8s %10s %12s %12s %12s %12s\n", "mode", "tokens", "tok/s", "TTFT p50 ms", "TTFT p99 ms",
                "ITL p50 ms", "ITL p99 ms");
    std::printf("%-22s %8s %10.1f %12s %12s %12s %12s\n", "offline --requests", "", offline, "", "", "", "");
    ServerProcess server(program + " --model " + model + flags + " --max-queue 256");
    std::stringstream cs(conc);
    for (std::string item; std::getline(cs, item, ',');) {
        int c = std::stoi(item);
        std::vector<double> ttft, itl;
        long tokens = 0;
        std::mutex mu;
        std::atomic<int> next{0};
        std::string failed;
        auto start = Clock::now();
        std::vector<std::thread> clients;
        for (int w = 0; w < c; w++)
            clients.emplace_back([&] {
                for (int i; (i = next++) < n;) {
                    json body = reqs[i];
                    body["stream"] = true;
                    Streamed s = stream(server.port, body);
                    std::lock_guard<std::mutex> lk(mu);
                    if (!s.done)
                        failed = "a stream ended early (status " + std::to_string(s.status) + " " + s.error + ")";
                    int k = static_cast<int>(s.events.size()) - 1;  // token events; the last one is the finish
                    tokens += k;
                    if (k > 0) ttft.push_back(s.at[0] * 1000);
                    for (int j = 1; j < k; j++) itl.push_back((s.at[j] - s.at[j - 1]) * 1000);
                }
            });
        for (auto& t : clients) t.join();
        if (!failed.empty()) {
            int code = server.stop();
            throw std::runtime_error(failed + "; the server exited with " + std::to_string(code) + ":\n" + server.log);
        }
        double wall = seconds(Clock::now() - start);
        std::printf("%-22s %8ld %10.1f %12.1f %12.1f %12.2f %12.2f\n", ("online, concurrency " + item).c_str(), tokens,
                    tokens / wall, percentile(ttft, 0.5), percentile(ttft, 0.99), percentile(itl, 0.5),
                    percentile(itl, 0.99));
        std::fflush(stdout);
    }
    int code = server.stop();
    fs::remove_all(dir);
    return code;
} catch (const std::exception& e) {
    std::fprintf(stderr, "serve_load: %s\n", e.what());
    return 1;
}
