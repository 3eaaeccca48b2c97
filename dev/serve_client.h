// dev/serve_client.h — the client side of `infer_gpt --serve` for test/test_serve.cu and dev/serve_load.cu:
// start the server as a child process on a free loopback port, read /metrics, stream a completion with
// the arrival time of every event. Loopback only; every wait has a time limit. Errors throw.
#pragma once
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

extern char** environ;

namespace serve_client {
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
inline double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// `program ARGS --serve --host 127.0.0.1 --port 0` as a child; its port is read from the line it prints.
struct ServerProcess {
    pid_t pid = -1;
    int port = 0;
    int out_fd = -1;
    std::string log;  // what it printed (stdout and stderr)

    explicit ServerProcess(const std::string& program_and_args, double start_timeout_s = 60) {
        int fds[2];
        if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
        posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
        posix_spawn_file_actions_addclose(&fa, fds[0]);
        std::string cmd = "exec " + program_and_args + " --serve --host 127.0.0.1 --port 0";
        const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
        int rc = posix_spawn(&pid, "/bin/sh", &fa, nullptr, const_cast<char**>(argv), environ);
        posix_spawn_file_actions_destroy(&fa);
        close(fds[1]);
        out_fd = fds[0];
        if (rc != 0) throw std::runtime_error("cannot start " + cmd);
        std::regex listening("serving '[^']*' on http://127\\.0\\.0\\.1:([0-9]+)");
        std::smatch m;
        for (auto start = Clock::now(); seconds(Clock::now() - start) < start_timeout_s;) {
            if (!read_output(200)) break;  // it ended
            if (std::regex_search(log, m, listening)) {
                port = std::stoi(m[1]);
                return;
            }
        }
        stop(SIGKILL, 10);
        throw std::runtime_error("the server did not start: " + cmd + "\n" + log);
    }
    ServerProcess(const ServerProcess&) = delete;
    ServerProcess& operator=(const ServerProcess&) = delete;
    // Appends what the server printed within timeout_ms; false at the end of its output.
    bool read_output(int timeout_ms) {
        pollfd p{out_fd, POLLIN, 0};
        if (poll(&p, 1, timeout_ms) <= 0) return true;
        char buf[4096];
        ssize_t n = read(out_fd, buf, sizeof buf);
        if (n <= 0) return false;
        log.append(buf, static_cast<size_t>(n));
        return true;
    }
    // Sends `sig` and waits up to timeout_s for the exit: its exit code, minus the signal that ended it, or
    // -1000 when it had to be killed.
    int stop(int sig = SIGTERM, double timeout_s = 30) {
        if (pid < 0) return -1000;
        kill(pid, sig);
        for (auto start = Clock::now(); seconds(Clock::now() - start) < timeout_s;) {
            int status = 0;
            if (waitpid(pid, &status, WNOHANG) == pid) {
                pid = -1;
                while (read_output(0)) {
                }
                return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
            }
            read_output(10);
        }
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
        pid = -1;
        return -1000;
    }
    ~ServerProcess() {
        if (pid > 0) stop(SIGKILL, 10);
        if (out_fd >= 0) close(out_fd);
    }
};

inline std::unique_ptr<httplib::Client> client(int port) {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
    c->set_connection_timeout(10);
    c->set_read_timeout(300);
    c->set_write_timeout(30);
    return c;
}

inline httplib::Result post(int port, const std::string& body) {
    return client(port)->Post("/v1/completions", body, "application/json");
}

// /metrics as "name{labels}" → value.
inline std::map<std::string, double> metrics(int port) {
    auto r = client(port)->Get("/metrics");
    if (!r || r->status != 200) throw std::runtime_error("GET /metrics failed");
    std::map<std::string, double> m;
    std::istringstream in(r->body);
    for (std::string line; std::getline(in, line);)
        if (!line.empty() && line[0] != '#') {
            size_t sp = line.rfind(' ');
            m[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
        }
    return m;
}

// Polls /metrics until `done` holds or timeout_s passes; returns the last reading.
inline std::map<std::string, double> wait_metrics(int port,
                                                  const std::function<bool(std::map<std::string, double>&)>& done,
                                                  double timeout_s = 30) {
    for (auto start = Clock::now();;) {
        auto m = metrics(port);
        if (done(m) || seconds(Clock::now() - start) > timeout_s) return m;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

// A streamed completion: each event's JSON and its arrival (seconds after the request was sent), until
// [DONE] or until `keep_going` says stop (the client then closes the connection mid-stream).
struct Streamed {
    std::vector<json> events;
    std::vector<double> at;
    bool done = false;
    int status = 0;
    std::string error;  // httplib's, when no response came
    std::string text() const {
        std::string s;
        for (const json& e : events)
            if (e.contains("choices") && !e["choices"].empty()) s += e["choices"][0]["text"].get<std::string>();
        return s;
    }
};
inline Streamed stream(int port, const json& body, const std::function<bool(const Streamed&)>& keep_going = nullptr) {
    Streamed out;
    std::string buf;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = {{"Content-Type", "application/json"}};
    req.body = body.dump();
    auto sent = Clock::now();
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
        buf.append(data, n);
        for (size_t end; (end = buf.find("\n\n")) != std::string::npos; buf.erase(0, end + 2)) {
            std::string ev = buf.substr(0, end);
            if (ev.rfind("data: ", 0) != 0) continue;  // ": keep-alive" comments
            if (ev == "data: [DONE]") {
                out.done = true;
                continue;
            }
            out.events.push_back(json::parse(ev.substr(6)));
            out.at.push_back(seconds(Clock::now() - sent));
        }
        return !keep_going || keep_going(out);
    };
    auto r = client(port)->send(req);
    out.status = r ? r->status : -1;
    if (!r) out.error = httplib::to_string(r.error());
    return out;
}

}  // namespace serve_client
