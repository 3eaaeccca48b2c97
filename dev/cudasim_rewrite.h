// cudasim_rewrite.h — the one source transformation the CPU build needs, as a function (tested in
// test/test_cudasim.cu) and as a tool (dev/cudasim_rewrite.cpp, run by the Makefile and dev/cudarun).
//
// CUDA's launch syntax and dynamic shared memory are not C++, so they are rewritten mechanically,
// keeping every newline (so line numbers stay true):
//   name<<<grid, block, smem, stream>>>(args)  ->  ::cudasim::launch(name, "name", grid, block, smem, stream)(args)
//   extern __shared__ __align__(16) T buf[];   ->  static thread_local T* const buf = (T*)::cudasim::dynamic_shared_memory();
//   __shared__ float tile[32][33];             ->  `__shared__ float cudasim_shared_tile[32][33]; auto& tile = ...`
//                                                  through cudasim, which fills `tile` with NaN bytes at every block
//                                                  start and checks it (rewrite_shared)
//   __launch_bounds__(N) ... {                 ->  the body starts by checking that the block has at most N threads
//   asm / __asm__ (inline PTX)                 ->  a compile error that names the feature
// Comments, string and character literals are copied untouched, so a `<<<` inside them stays as it is.
#pragma once
#include <cctype>
#include <stdexcept>
#include <string>

namespace cudasim {

inline bool is_ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Length of the comment or literal starting at s[i], or 0 when s[i] starts ordinary code.
inline size_t skip_non_code(const std::string& s, size_t i) {
    if (s.compare(i, 2, "//") == 0) {
        size_t e = s.find('\n', i);
        return (e == std::string::npos ? s.size() : e) - i;
    }
    if (s.compare(i, 2, "/*") == 0) {
        size_t e = s.find("*/", i + 2);
        return (e == std::string::npos ? s.size() : e + 2) - i;
    }
    if (s[i] == '"' || s[i] == '\'') {
        if (s[i] == '\'' && i > 0 && std::isxdigit(static_cast<unsigned char>(s[i - 1])) && i + 1 < s.size() &&
            std::isxdigit(static_cast<unsigned char>(s[i + 1])) && is_ident_char(s[i - 1]))
            return 0;  // a digit separator such as 1'000
        if (s[i] == '"' && i > 0 && s[i - 1] == 'R') {  // raw string R"delim( ... )delim"
            size_t open = s.find('(', i);
            std::string close = ")" + s.substr(i + 1, open - i - 1) + "\"";
            size_t e = s.find(close, open);
            return (e == std::string::npos ? s.size() : e + close.size()) - i;
        }
        char q = s[i];
        size_t j = i + 1;
        while (j < s.size() && s[j] != q && s[j] != '\n') j += s[j] == '\\' ? 2 : 1;
        return std::min(j + 1, s.size()) - i;
    }
    return 0;
}

// Start of the kernel expression that ends just before `end` (exclusive): an identifier, optionally
// qualified (ns::name) and optionally with template arguments (name<T, 4>).
inline size_t kernel_name_start(const std::string& s, size_t end) {
    size_t i = end;
    while (i > 0 && std::isspace(static_cast<unsigned char>(s[i - 1]))) i--;
    for (;;) {
        if (i > 0 && s[i - 1] == '>') {  // template arguments: walk back to the matching '<'
            int depth = 0;
            while (i > 0) {
                char c = s[--i];
                if (c == '>' || c == ')') depth++;
                if (c == '<' || c == '(') depth--;
                if (depth == 0) break;
            }
            while (i > 0 && std::isspace(static_cast<unsigned char>(s[i - 1]))) i--;
        }
        while (i > 0 && is_ident_char(s[i - 1])) i--;
        if (i >= 2 && s[i - 1] == ':' && s[i - 2] == ':') { i -= 2; continue; }
        return i;
    }
}

inline std::string trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// `extern __shared__ [__align__(n)|alignas(n)] T name[];` -> a pointer into the worker's buffer.
inline std::string rewrite_extern_shared(const std::string& decl /* between "__shared__" and ";" */) {
    std::string d = decl;
    for (const char* attr : {"__align__", "alignas"}) {
        for (size_t p; (p = d.find(attr)) != std::string::npos;) {
            size_t open = d.find('(', p), close = d.find(')', open);
            if (open == std::string::npos || close == std::string::npos) throw std::runtime_error("malformed " + std::string(attr));
            d.erase(p, close + 1 - p);
        }
    }
    size_t bracket = d.find('[');
    if (bracket == std::string::npos) throw std::runtime_error("extern __shared__ declaration without []: " + decl);
    std::string head = trim(d.substr(0, bracket));
    size_t n = head.size();
    while (n > 0 && is_ident_char(head[n - 1])) n--;
    std::string name = head.substr(n), type = trim(head.substr(0, n));
    if (name.empty() || type.empty()) throw std::runtime_error("cannot parse extern __shared__ declaration: " + decl);
    return "static thread_local " + type + "* const " + name + " = reinterpret_cast<" + type +
           "*>(::cudasim::dynamic_shared_memory())";
}

// `__shared__ DECL;` (one declarator, no initializer) -> the same declaration of `cudasim_shared_NAME`
// and a reference NAME to it through cudasim, which NaN-fills the variable at every block start, counts
// it toward the kernel's static shared memory, and (being opaque to the compiler) makes every access
// to it go through a pointer, so the checked build sees each one. Other shapes are copied unchanged
// (then simply not poisoned nor checked).
inline std::string rewrite_shared(const std::string& decl /* between "__shared__" and ";" */) {
    std::string d = decl;
    for (const char* attr : {"__align__", "alignas"})
        for (size_t p; (p = d.find(attr)) != std::string::npos;) {
            size_t close = d.find(')', p);
            if (close == std::string::npos) return "";
            d.erase(p, close + 1 - p);
        }
    if (d.find_first_of("=,(){};") != std::string::npos) return "";
    size_t bracket = decl.find('['), end = bracket == std::string::npos ? decl.size() : bracket;
    while (end > 0 && std::isspace(static_cast<unsigned char>(decl[end - 1]))) end--;
    size_t start = end;
    while (start > 0 && is_ident_char(decl[start - 1])) start--;
    std::string name = decl.substr(start, end - start);
    if (name.empty() || trim(decl.substr(0, start)).empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return "";
    std::string storage = "cudasim_shared_" + name;
    return decl.substr(0, start) + storage + decl.substr(end) + "; auto& " + name +
           " = *::cudasim::check::shared_variable(&" + storage + ", \"" + name + "\")";
}

inline std::string rewrite_cuda_source(const std::string& s) {
    std::string out;
    out.reserve(s.size() + 256);
    std::string pending_bounds;  // the thread limit of a __launch_bounds__ kernel whose body comes next
    int bounds_depth = 0;
    size_t i = 0;
    while (i < s.size()) {
        if (size_t skip = skip_non_code(s, i)) {
            out.append(s, i, skip);
            i += skip;
            continue;
        }
        // inline PTX: refuse at compile time, naming the feature (a g++ error at this line)
        for (const char* kw : {"__asm__", "asm"}) {
            size_t len = std::char_traits<char>::length(kw);
            if (s.compare(i, len, kw) == 0 && (i == 0 || !is_ident_char(s[i - 1])) &&
                (i + len >= s.size() || !is_ident_char(s[i + len]))) {
                out += "_Pragma(\"GCC error \\\"cudasim: inline PTX (asm) cannot run on the CPU; keep it behind "
                       "#ifdef __CUDA_ARCH__ with a plain C++ fallback\\\"\") ";
                break;
            }
        }
        if (s.compare(i, 6, "extern") == 0 && (i == 0 || !is_ident_char(s[i - 1]))) {
            size_t j = i + 6;
            while (j < s.size() && std::isspace(static_cast<unsigned char>(s[j]))) j++;
            if (s.compare(j, 10, "__shared__") == 0) {
                size_t semi = s.find(';', j);
                if (semi == std::string::npos) throw std::runtime_error("extern __shared__ without ';'");
                out += rewrite_extern_shared(s.substr(j + 10, semi - j - 10));
                i = semi;  // the ';' is copied next
                continue;
            }
        }
        if (s.compare(i, 10, "__shared__") == 0 && (i == 0 || !is_ident_char(s[i - 1])) && !is_ident_char(s[i + 10])) {
            size_t semi = s.find(';', i);
            if (semi != std::string::npos) {
                std::string decl = s.substr(i + 10, semi - i - 10);
                std::string rewritten = decl.find('\n') == std::string::npos ? rewrite_shared(decl) : "";
                if (!rewritten.empty()) {  // one-line declarations only: lines stay in place
                    out += "__shared__" + rewritten;
                    i = semi;  // the ';' is copied next
                    continue;
                }
            }
        }
        // `__launch_bounds__(N, ...)`: the macro expands to nothing; the kernel's body starts with a check
        // that the block has at most N threads (a GPU refuses the launch otherwise).
        if (s.compare(i, 17, "__launch_bounds__") == 0 && (i == 0 || !is_ident_char(s[i - 1])) && !is_ident_char(s[i + 17])) {
            size_t open = s.find('(', i);
            int depth = 0;
            size_t j = open, arg_end = std::string::npos;
            for (; j < s.size(); j++) {
                if (s[j] == '(') depth++;
                if (s[j] == ')' && --depth == 0) break;
                if (s[j] == ',' && depth == 1 && arg_end == std::string::npos) arg_end = j;
            }
            if (open == std::string::npos || j >= s.size()) throw std::runtime_error("malformed __launch_bounds__");
            pending_bounds = trim(s.substr(open + 1, (arg_end == std::string::npos ? j : arg_end) - open - 1));
            out.append(s, i, j + 1 - i);
            i = j + 1;
            continue;
        }
        if (!pending_bounds.empty()) {
            if (s[i] == '(') bounds_depth++;
            if (s[i] == ')') bounds_depth--;
            if (s[i] == ';' && bounds_depth == 0) pending_bounds.clear();  // a declaration, not the definition
            if (s[i] == '{' && bounds_depth == 0) {
                out += "{ ::cudasim::check::launch_bounds(" + pending_bounds + ", __func__);";
                pending_bounds.clear();
                i++;
                continue;
            }
        }
        if (s.compare(i, 3, "<<<") == 0) {
            // the launch configuration runs to the matching ">>>" at bracket depth 0
            size_t j = i + 3, cfg_end = std::string::npos;
            int depth = 0;
            while (j < s.size()) {
                if (size_t skip = skip_non_code(s, j)) { j += skip; continue; }
                char c = s[j];
                if (c == '(' || c == '[' || c == '{') depth++;
                if (c == ')' || c == ']' || c == '}') depth--;
                if (depth == 0 && s.compare(j, 3, ">>>") == 0) { cfg_end = j; break; }
                j++;
            }
            if (cfg_end == std::string::npos) throw std::runtime_error("'<<<' without a matching '>>>'");
            size_t start = kernel_name_start(out, out.size());
            std::string name = trim(out.substr(start));
            if (name.empty()) throw std::runtime_error("'<<<' without a kernel name before it");
            std::string quoted;
            for (char c : name) quoted += c == '\n' ? ' ' : c;
            out.erase(start);
            out += "::cudasim::launch(" + name + ", \"" + quoted + "\", " + s.substr(i + 3, cfg_end - i - 3) + ")";
            i = cfg_end + 3;
            continue;
        }
        out += s[i++];
    }
    return out;
}

}  // namespace cudasim
