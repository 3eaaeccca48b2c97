// cudasim_rewrite: prepares a CUDA source for the CPU build (see dev/cudasim_rewrite.h).
//
//   cudasim_rewrite INPUT OUT_ROOT [-I DIR]...
//
// Writes OUT_ROOT/<absolute path of INPUT> and, recursively, every file it includes with quotes
// ("x.cuh", found next to the includer or under a -I DIR), so quoted includes resolve to rewritten
// copies. Each output starts with `#line 1 "<original path>"`: compiler errors and gdb show the
// original file and line. Prints the path of the rewritten INPUT. Files are rewritten only when their
// content changes, so make and the compiler see stable timestamps.
//
// Two passes: the first finds every file and the kernels each declares (`scan_kernels`), the second
// rewrites each file knowing all of them, so a launch in one file of a kernel from another is written in
// the form that kernel needs. Conditionals on __CUDA_ARCH__ are decided first (`resolve_cuda_arch`), so the
// kernels and includes seen are those of the branches the CPU build keeps. An include by absolute path
// ("/abs/x.cuh") is pointed at its rewritten copy.
#include "cudasim_rewrite.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <vector>

namespace fs = std::filesystem;

static std::string read_file(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) throw std::runtime_error("cannot read " + p.string());
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

static void write_if_changed(const fs::path& p, const std::string& text) {
    std::error_code ec;
    if (fs::exists(p, ec) && read_file(p) == text) return;
    fs::create_directories(p.parent_path());
    std::ofstream f(p, std::ios::binary);
    f << text;
    if (!f) throw std::runtime_error("cannot write " + p.string());
}

// Paths named in `#include "..."` lines (outside comments).
static std::vector<std::string> quoted_includes(const std::string& s) {
    std::vector<std::string> names;
    std::istringstream in(s);
    for (std::string line; std::getline(in, line);) {
        size_t h = line.find_first_not_of(" \t");
        if (h == std::string::npos || line[h] != '#') continue;
        size_t inc = line.find_first_not_of(" \t", h + 1);
        if (inc == std::string::npos || line.compare(inc, 7, "include") != 0) continue;
        size_t open = line.find('"', inc + 7);
        if (open == std::string::npos) continue;
        size_t close = line.find('"', open + 1);
        if (close != std::string::npos) names.push_back(line.substr(open + 1, close - open - 1));
    }
    return names;
}

struct Rewriter {
    fs::path out_root;
    std::vector<fs::path> include_dirs;
    std::set<fs::path> done;
    struct Source {
        fs::path abs;
        std::string shown, text;
    };
    std::vector<Source> sources;  // in the order found
    cudasim::KernelTable kernels;

    fs::path output_for(const fs::path& abs) const { return out_root / abs.relative_path(); }

    // Second pass: rewrite every file found, with every kernel known.
    void write_all() {
        for (const Source& f : sources) {
            std::string text;
            try {
                text = "#line 1 \"" + f.shown + "\"\n" + cudasim::rewrite_cuda_source(f.text, &kernels);
            } catch (const std::exception& e) {
                throw std::runtime_error(f.shown + ": " + e.what());
            }
            write_if_changed(output_for(f.abs), point_absolute_includes(text));
        }
    }

    // `#include "/abs/path.cuh"` -> the rewritten copy of that file (the line stays one line).
    std::string point_absolute_includes(const std::string& text) const {
        std::string out;
        std::istringstream in(text);
        for (std::string line; std::getline(in, line);) {
            size_t h = line.find_first_not_of(" \t");
            size_t open = line.find('"');
            if (h != std::string::npos && line[h] == '#' && line.find("include") != std::string::npos &&
                open != std::string::npos && open + 1 < line.size() && line[open + 1] == '/') {
                size_t close = line.find('"', open + 1);
                fs::path target = line.substr(open + 1, close - open - 1);
                std::error_code ec;
                if (close != std::string::npos && fs::is_regular_file(target, ec))
                    line = line.substr(0, open + 1) + output_for(fs::weakly_canonical(target)).string() +
                           line.substr(close);
            }
            out += line + "\n";
        }
        if (!text.empty() && text.back() != '\n') out.pop_back();
        return out;
    }

    // First pass: find the file and, recursively, its quoted includes; note their kernels.
    void process(const fs::path& file, const std::string& shown_name) {
        fs::path abs = fs::weakly_canonical(fs::absolute(file));
        if (!done.insert(abs).second) return;
        // which __CUDA_ARCH__ branches exist here; device clock() as the device's; host-only functions marked (not
        // instrumented when checked)
        std::string src =
            cudasim::mark_host_functions(cudasim::resolve_device_clock(cudasim::resolve_cuda_arch(read_file(abs))));
        cudasim::scan_kernels(src, kernels);
        sources.push_back(Source{abs, shown_name, src});
        for (const std::string& name : quoted_includes(src)) {
            std::vector<fs::path> candidates{fs::path(name).is_absolute() ? fs::path(name) : abs.parent_path() / name};
            for (const fs::path& d : include_dirs) candidates.push_back(d / name);
            for (const fs::path& c : candidates) {
                std::error_code ec;
                if (fs::is_regular_file(c, ec)) {
                    fs::path rel = fs::relative(fs::weakly_canonical(c), fs::current_path(), ec);
                    std::string shown = !ec && !rel.empty() && rel.native().rfind("..", 0) != 0
                                            ? rel.string()
                                            : fs::weakly_canonical(c).string();
                    process(c, shown);
                    break;
                }
            }
        }
    }
};

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: cudasim_rewrite INPUT OUT_ROOT [-I DIR]...\n";
        return 2;
    }
    try {
        Rewriter r;
        r.out_root = fs::absolute(argv[2]);
        for (int i = 3; i < argc; i++) {
            std::string a = argv[i];
            if (a == "-I" && i + 1 < argc) r.include_dirs.push_back(fs::absolute(argv[++i]));
            else if (a.rfind("-I", 0) == 0) r.include_dirs.push_back(fs::absolute(a.substr(2)));
            else throw std::runtime_error("unknown argument " + a);
        }
        r.process(argv[1], argv[1]);
        r.write_all();
        std::cout << r.output_for(fs::weakly_canonical(fs::absolute(argv[1]))).string() << "\n";
    } catch (const std::exception& e) {
        std::cerr << "cudasim_rewrite: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
