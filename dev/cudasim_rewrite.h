// cudasim_rewrite.h — the one source transformation the CPU build needs, as a function (tested in
// test/test_cudasim.cu) and as a tool (dev/cudasim_rewrite.cpp, run by the Makefile and dev/cudarun).
//
// CUDA's launch syntax and dynamic shared memory are not C++, so they are rewritten mechanically,
// keeping every newline (so line numbers stay true):
//   name<<<grid, block, smem, stream>>>(args)  ->  ::cudasim::launch(name, "name", grid, block, smem, stream)(args)
//   extern __shared__ __align__(16) T buf[];   ->  static thread_local T* const buf =
//   (T*)::cudasim::dynamic_shared_memory();
//   __shared__ float tile[32][33];             ->  `__shared__ float cudasim_shared_tile[32][33]; auto& tile = ...`
//                                                  through cudasim, which fills `tile` with NaN bytes at every block
//                                                  start and checks it (rewrite_shared)
//   __launch_bounds__(N) ... {                 ->  the body starts by checking that the block has at most N threads
//   asm / __asm__ (inline PTX)                 ->  a compile error that names the feature
//   #if __CUDA_ARCH__ >= 700 (and friends)     ->  decided as nvcc's device or host pass would, by where the
//                                                  conditional stands (resolve_cuda_arch, run first)
// Comments, string and character literals are copied untouched, so a `<<<` inside them stays as it is.
//
// Kernels the rewrite has seen (`scan_kernels`, over the file and the files it includes) change
// two things:
//   - a launch the function-pointer form cannot express becomes a call in every CUDA thread,
//       k<<<grid, block>>>(args)  ->  ::cudasim::launch_call([](auto&... a) { k(a...); }, "k", grid, block)(args)
//     so overload resolution and template deduction choose the kernel as nvcc does: for a template kernel
//     whose arguments are deduced and for a kernel with default arguments; a kernel that shares its name
//     with a host function is named by its exact type, static_cast<void (*)(PARAMS)>(k);
//   - after each non-template kernel definition, on the same line, a registration that lets
//     cudaLaunchKernel and graph kernel nodes launch it with `void** args`.
#pragma once
#include <cctype>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

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
            if (open == std::string::npos || close == std::string::npos)
                throw std::runtime_error("malformed " + std::string(attr));
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
    // `T s[][N]` (rows of N): a pointer to arrays of N, so s[i][j] indexes as it does on the GPU
    size_t first_close = d.find(']', bracket);
    std::string rows = first_close == std::string::npos ? "" : trim(d.substr(first_close + 1));
    if (!rows.empty())
        return "static thread_local " + type + " (* const " + name + ")" + rows + " = reinterpret_cast<" + type +
               " (*)" + rows + ">(::cudasim::dynamic_shared_memory())";
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
    if (name.empty() || trim(decl.substr(0, start)).empty() || std::isdigit(static_cast<unsigned char>(name[0])))
        return "";
    std::string storage = "cudasim_shared_" + name;
    return decl.substr(0, start) + storage + decl.substr(end) + "; auto& " + name +
           " = *::cudasim::check::shared_variable(&" + storage + ", \"" + name + "\")";
}

// ---- what the rewrite knows about the kernels of a translation unit
struct KernelInfo {
    int definitions = 0;        // non-template __global__ definitions or declarations with this name
    bool is_template = false;   // some __global__ template has this name
    bool has_defaults = false;  // some declaration gives a default argument
    bool host_same_name = false;// a non-kernel function declaration has this name
    std::string params;         // the parameter list (no defaults) of the non-template kernel
};
using KernelTable = std::map<std::string, KernelInfo>;

// s[open] is an opening bracket; the index of its match (skipping comments and literals), or npos.
inline size_t matching_bracket(const std::string& s, size_t open) {
    char o = s[open], c = o == '(' ? ')' : o == '{' ? '}' : o == '[' ? ']' : '>';
    int depth = 0;
    for (size_t i = open; i < s.size();) {
        if (size_t skip = skip_non_code(s, i)) { i += skip; continue; }
        if (s[i] == o) depth++;
        if (s[i] == c && --depth == 0) return i;
        i++;
    }
    return std::string::npos;
}

// A parameter list without its default arguments (`int n = 4, float x` -> `int n, float x`).
inline std::string strip_defaults(const std::string& params) {
    std::string out;
    int depth = 0;
    bool skipping = false;
    for (char c : params) {
        if (c == '(' || c == '<' || c == '[' || c == '{') depth++;
        if (c == ')' || c == '>' || c == ']' || c == '}') depth--;
        if (depth == 0 && c == ',') skipping = false;
        if (depth == 0 && c == '=') skipping = true;
        if (!skipping) out += c;
    }
    return out;
}

inline bool has_token(const std::string& s, const std::string& word) {
    for (size_t p = s.find(word); p != std::string::npos; p = s.find(word, p + 1))
        if ((p == 0 || !is_ident_char(s[p - 1])) && (p + word.size() >= s.size() || !is_ident_char(s[p + word.size()])))
            return true;
    return false;
}

// The declaration text before position `p`: back to the previous `;`, `{`, `}` or preprocessor line.
inline std::string declaration_head(const std::string& s, size_t p) {
    size_t b = p;
    while (b > 0 && s[b - 1] != ';' && s[b - 1] != '{' && s[b - 1] != '}') {
        if (s[b - 1] == '\n') {
            size_t q = b;
            while (q < p && (s[q] == ' ' || s[q] == '\t')) q++;
            if (q < p && s[q] == '#') { size_t e = s.find('\n', q); b = e == std::string::npos ? p : e + 1; break; }
        }
        b--;
    }
    if (b == 0 && s.find_first_not_of(" \t") < p && s[s.find_first_not_of(" \t")] == '#') {  // the file's first line
        size_t e = s.find('\n');
        b = e == std::string::npos || e >= p ? p : e + 1;
    }
    return s.substr(b, p - b);
}

// `head` without its template argument and parameter lists (`template <class T> void f(S<T> x)` ->
// `template  void f(S x)`), so a keyword inside them (`class T`) is not taken for the declaration's own.
inline std::string without_angle_brackets(const std::string& head) {
    std::string out;
    int depth = 0;
    for (size_t i = 0; i < head.size(); i++) {
        if (head[i] == '<' && (i + 1 >= head.size() || head[i + 1] != '<') && (i == 0 || head[i - 1] != '<')) depth++;
        else if (head[i] == '>' && depth > 0) depth--;
        else if (depth == 0) out += head[i];
    }
    return out;
}

// Records the __global__ functions of `s` (and host functions sharing their names) in `table`.
inline void scan_kernels(const std::string& s, KernelTable& table) {
    std::string code;  // s with comments and literals blanked, same length
    for (size_t i = 0; i < s.size();) {
        if (size_t skip = skip_non_code(s, i)) {
            for (size_t j = 0; j < skip; j++) code += s[i + j] == '\n' ? '\n' : ' ';
            i += skip;
            continue;
        }
        code += s[i++];
    }
    for (size_t p = code.find("__global__"); p != std::string::npos; p = code.find("__global__", p + 10)) {
        if ((p > 0 && is_ident_char(code[p - 1])) || is_ident_char(code[p + 10])) continue;
        bool is_template = has_token(declaration_head(code, p), "template");
        // the name: the first identifier followed by '(' that is not an attribute
        size_t i = p + 10, open = std::string::npos;
        std::string name;
        while (i < code.size() && code[i] != ';' && code[i] != '{') {
            if (is_ident_char(code[i])) {
                size_t e = i;
                while (e < code.size() && is_ident_char(code[e])) e++;
                std::string word = code.substr(i, e - i);
                size_t q = e;
                while (q < code.size() && std::isspace(static_cast<unsigned char>(code[q]))) q++;
                if (q < code.size() && code[q] == '(') {
                    if (word == "__launch_bounds__" || word == "__attribute__" || word == "__declspec" ||
                        word == "__align__" || word == "alignas") {
                        i = matching_bracket(code, q);
                        if (i == std::string::npos) break;
                        i++;
                        continue;
                    }
                    name = word;
                    open = q;
                    break;
                }
                i = e;
                continue;
            }
            i++;
        }
        if (name.empty()) continue;
        size_t close = matching_bracket(code, open);
        if (close == std::string::npos) continue;
        std::string params = code.substr(open + 1, close - open - 1);
        KernelInfo& k = table[name];
        if (is_template) k.is_template = true;
        else {
            std::string stripped = strip_defaults(params);
            if (k.params != stripped) k.definitions++;
            k.params = stripped;
        }
        if (strip_defaults(params) != params) k.has_defaults = true;
    }
    // host (or device) functions that share a kernel's name: `TYPE name(` in a declaration without __global__
    for (auto& [name, info] : table) {
        for (size_t p = code.find(name); p != std::string::npos; p = code.find(name, p + 1)) {
            if ((p > 0 && is_ident_char(code[p - 1])) || is_ident_char(code[p + name.size()])) continue;
            size_t q = p + name.size();
            while (q < code.size() && std::isspace(static_cast<unsigned char>(code[q]))) q++;
            if (q >= code.size() || code[q] != '(') continue;
            std::string head = trim(declaration_head(code, p));
            if (head.empty() || has_token(head, "__global__")) continue;
            char last = head.back();
            if (!(is_ident_char(last) || last == '*' || last == '&' || last == '>')) continue;
            if (head.find_first_of("=(),") != std::string::npos) continue;
            size_t w = head.size();
            while (w > 0 && is_ident_char(head[w - 1])) w--;
            std::string prev = head.substr(w);
            if (prev == "return" || prev == "else" || prev == "new" || prev == "case" || prev == "throw" ||
                prev == "do" || prev == "goto" || prev == "sizeof" || prev == "decltype")
                continue;
            info.host_same_name = true;
        }
    }
}

// The text that stands for kernel `name` in a launch: how the launch must be written.
enum class LaunchForm { pointer, typed_pointer, call };
inline LaunchForm launch_form(const KernelTable* table, const std::string& name) {
    if (!table || name.find_first_of(":<") != std::string::npos) return LaunchForm::pointer;
    auto it = table->find(name);
    if (it == table->end()) return LaunchForm::pointer;
    const KernelInfo& k = it->second;
    if (k.is_template || k.has_defaults || k.definitions > 1) return LaunchForm::call;
    if (k.host_same_name) return LaunchForm::typed_pointer;
    return LaunchForm::pointer;
}

// ---- __CUDA_ARCH__ in one pass. nvcc preprocesses a file twice: the device pass with __CUDA_ARCH__ set to
// the target (800 for sm_80) and the host pass without it; the program is the host pass's host code plus the
// device pass's device code. The CPU build compiles once, so the rewrite decides each conditional that
// mentions __CUDA_ARCH__ by where it stands (`resolve_cuda_arch`):
//   - inside the body of a device-only function (`__global__`, or `__device__` without `__host__`): as the
//     device pass, with __CUDA_ARCH__ = CUDASIM_CUDA_ARCH (800, the virtual device's sm_80; dev/cudasim.h);
//     the token in ordinary code there becomes CUDASIM_CUDA_ARCH too;
//   - inside any other function body (host, or `__host__ __device__`, which is one function here for both
//     callers): as the host pass, unchanged; that branch is the one written for a host compiler;
//   - at declaration level (file, namespace, class scope): as the union of the two passes. A branch that only
//     one pass selects is kept when the other pass selects nothing (an empty branch or none), so device
//     functions under `#if __CUDA_ARCH__ >= 700` and host helpers under `#ifndef __CUDA_ARCH__` both exist;
//     where each pass selects code of its own (`#ifdef __CUDA_ARCH__ A #else B #endif`), the host pass's.
// Only directive lines change (each stays one line, continuation lines become empty ones), so lines stay true.

// `cond` (the text after #if/#elif, comments blanked) with __CUDA_ARCH__ decided: defined(...) -> 1 or 0,
// the value -> CUDASIM_CUDA_ARCH or 0 (as the preprocessor reads an undefined name).
inline std::string arch_condition(const std::string& cond, bool device) {
    const std::string name = "__CUDA_ARCH__";
    std::string out;
    for (size_t i = 0; i < cond.size();) {
        if (cond.compare(i, 7, "defined") == 0 && (i == 0 || !is_ident_char(cond[i - 1])) &&
            !is_ident_char(cond[i + 7])) {
            size_t j = cond.find_first_not_of(" \t", i + 7);
            bool paren = j != std::string::npos && cond[j] == '(';
            if (paren) j = cond.find_first_not_of(" \t", j + 1);
            if (j != std::string::npos && cond.compare(j, name.size(), name) == 0 &&
                !is_ident_char(cond[j + name.size()])) {
                size_t e = j + name.size();
                if (paren) e = cond.find(')', e) + 1;
                out += device ? " 1 " : " 0 ";
                i = e;
                continue;
            }
        }
        if (cond.compare(i, name.size(), name) == 0 && (i == 0 || !is_ident_char(cond[i - 1])) &&
            !is_ident_char(cond[i + name.size()])) {
            out += device ? "CUDASIM_CUDA_ARCH" : "0";
            i += name.size();
            continue;
        }
        out += cond[i++];
    }
    return out;
}

// `s` with comments and literals blanked (newlines kept): the same length, only code left.
inline std::string code_only(const std::string& s) {
    std::string code;
    code.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        if (size_t skip = skip_non_code(s, i)) {
            for (size_t j = 0; j < skip; j++) code += s[i + j] == '\n' ? '\n' : ' ';
            i += skip;
            continue;
        }
        code += s[i++];
    }
    return code;
}

// Is a function whose declaration reads `head` plainly host-only? Not when anything in it could make it callable
// from device code: __device__/__global__, constexpr (nvcc's --expt-relaxed-constexpr), or a name outside its
// parameter and template lists that may be a macro standing for them (ALL_CAPS, or reserved: `__x`, `_X`), apart
// from the qualifiers known to mean nothing here.
inline bool plainly_host_only(const std::string& head) {
    if (head.find('(') == std::string::npos || has_token(head, "constexpr") || has_token(head, "consteval"))
        return false;
    int depth = 0;
    for (char c : head) {
        depth += c == '(' || c == '<' || c == '[' ? 1 : c == ')' || c == '>' || c == ']' ? -1 : 0;
        if (c == '=' && depth == 0) return false;  // a variable (`auto f = [](...) {`), not a function
    }
    std::string outside;  // the head outside parentheses and angle brackets: where a qualifying macro would stand
    depth = 0;
    for (char c : without_angle_brackets(head)) {
        if (c == ')') depth--;
        if (depth == 0) outside += c;
        if (c == '(') depth++;
    }
    for (size_t i = 0; i < outside.size();) {
        if (!is_ident_char(outside[i]) || (i > 0 && is_ident_char(outside[i - 1]))) { i++; continue; }
        size_t e = i;
        while (e < outside.size() && is_ident_char(outside[e])) e++;
        std::string w = outside.substr(i, e - i);
        i = e;
        if (w == "__host__" || w == "__forceinline__" || w == "__noinline__" || w == "__inline__" ||
            w == "__restrict__" || w == "__attribute__")
            continue;
        auto up = [](char c) { return std::isupper(static_cast<unsigned char>(c)) != 0; };
        bool caps = w.size() >= 2, letter = false;
        for (char c : w) {
            caps = caps && (up(c) || std::isdigit(static_cast<unsigned char>(c)) || c == '_');
            letter = letter || std::isalpha(static_cast<unsigned char>(c));
        }
        bool reserved = w.size() >= 2 && w[0] == '_' && (w[1] == '_' || up(w[1]));
        if ((caps && letter) || reserved) return false;
    }
    return true;
}

// Where each part of a source stands: every position's scope, the function bodies opened at declaration level, and
// the preprocessor directives. Scopes: 'n' declaration level (file, namespace, class), 'd' the body of a device-only
// function (`__global__`, or `__device__` without `__host__`), 'h' a plainly host-only function's body
// (`plainly_host_only`), 'f' any other function's (`__host__ __device__`, or one whose head has a macro in it).
struct SourceScopes {
    std::string code;  // code_only(s)
    std::vector<char> at;  // the scope of each position
    struct Body {
        size_t head, brace;  // where the function's declaration starts (after blanks), its opening brace
        char kind;
    };
    std::vector<Body> bodies;
    struct Directive {
        size_t begin, end;  // [begin, end): the directive's text, continuation lines included, no final newline
        std::string keyword, rest;
        char scope;
    };
    std::vector<Directive> directives;
};

inline SourceScopes scan_scopes(const std::string& s) {
    SourceScopes r;
    r.code = code_only(s);
    const std::string& code = r.code;
    r.at.assign(code.size() + 1, 'n');
    std::vector<char> scopes;  // the kind of each open brace
    for (size_t i = 0; i < code.size();) {
        size_t line_end = code.find('\n', i);
        if (line_end == std::string::npos) line_end = code.size();
        size_t h = code.find_first_not_of(" \t", i);
        char scope = 'n';
        for (char c : scopes) scope = c == 'n' ? scope : c;
        if (h < line_end && code[h] == '#') {
            size_t e = line_end;
            while (e < code.size() && e > 0 && code[e - 1] == '\\') {  // continuation lines
                size_t n = code.find('\n', e + 1);
                e = n == std::string::npos ? code.size() : n;
            }
            size_t k = code.find_first_not_of(" \t", h + 1), ke = k;
            while (ke < e && is_ident_char(code[ke])) ke++;
            std::string rest = code.substr(ke, e - ke);
            for (char& c : rest) c = c == '\\' || c == '\n' ? ' ' : c;
            r.directives.push_back({i, e, k < e ? code.substr(k, ke - k) : "", rest, scope});
            for (size_t p = i; p < e; p++) r.at[p] = scope;
            i = e + 1;
            continue;
        }
        for (size_t p = i; p < line_end; p++) {
            r.at[p] = scopes.empty() ? 'n' : scopes.back();
            if (code[p] == '}' && !scopes.empty()) scopes.pop_back();
            if (code[p] != '{') continue;
            bool in_function = false;
            for (char c : scopes) in_function = in_function || c != 'n';
            if (in_function) { scopes.push_back(scopes.back()); continue; }
            std::string head = declaration_head(code, p);
            // not past the last directive: declaration_head cannot see a multi-line #define's continuation lines
            if (!r.directives.empty() && r.directives.back().end + 1 > p - head.size())
                head = code.substr(r.directives.back().end + 1, p - r.directives.back().end - 1);
            std::string bare = without_angle_brackets(head);
            size_t t = head.find_last_not_of(" \t\r\n");
            bool declares = has_token(bare, "namespace") || has_token(bare, "struct") || has_token(bare, "class") ||
                            has_token(bare, "union") || has_token(bare, "enum") || trim(head) == "extern" ||
                            (t != std::string::npos && head[t] == '=');  // an initializer
            bool device = has_token(head, "__global__") || has_token(head, "__device__");
            char kind = declares ? 'n' : device && !has_token(head, "__host__") ? 'd' :
                        !device && plainly_host_only(head) ? 'h' : 'f';
            scopes.push_back(kind);
            size_t first = code.find_first_not_of(" \t\r\n", p - head.size());
            if (kind != 'n') r.bodies.push_back({std::min(first, p), p, kind});
        }
        i = line_end + 1;
    }
    return r;
}

// the checked build (CUDASIM_CHECKED) instruments every access of compiled code, and host code pays for
// it without being checked (the checks are on only inside a kernel): a CPU reference ran ~4x slower than nvcc's
// host code. A plainly host-only function definition gets CUDASIM_HOST_CODE (no instrumentation in the checked
// build, nothing otherwise) in front of its declaration, after any `template <...>`, `extern "C"` and `public:`.
inline std::string mark_host_functions(const std::string& s) {
    SourceScopes scopes = scan_scopes(s);
    const std::string& code = scopes.code;
    std::vector<size_t> marks;
    for (const SourceScopes::Body& b : scopes.bodies) {
        if (b.kind != 'h') continue;
        size_t p = b.head;
        for (;;) {  // template heads, extern "C", [[attributes]]
            p = code.find_first_not_of(" \t\r\n", p);
            if (p >= b.brace) break;
            if (code.compare(p, 8, "template") == 0 && !is_ident_char(code[p + 8])) {
                size_t open = code.find_first_not_of(" \t\r\n", p + 8);
                if (open >= b.brace || code[open] != '<') break;
                int depth = 0;
                size_t q = open;
                for (; q < b.brace; q++) {
                    if (code[q] == '<' || code[q] == '(') depth++;
                    if ((code[q] == '>' || code[q] == ')') && --depth == 0) break;
                }
                p = q + 1;
                continue;
            }
            if (code.compare(p, 6, "extern") == 0 && !is_ident_char(code[p + 6])) { p += 6; continue; }
            bool access = false;  // `public:` and friends end the previous member's declaration
            for (const char* a : {"public", "private", "protected"}) {
                size_t len = std::char_traits<char>::length(a), colon = code.find_first_not_of(" \t\r\n", p + len);
                if (code.compare(p, len, a) == 0 && colon < b.brace && code[colon] == ':' && code[colon + 1] != ':') {
                    p = colon + 1;
                    access = true;
                }
            }
            if (access) continue;
            if (code.compare(p, 2, "[[") == 0) {
                size_t q = code.find("]]", p);
                if (q == std::string::npos || q > b.brace) break;
                p = q + 2;
                continue;
            }
            break;
        }
        if (p < b.brace) marks.push_back(p);
    }
    if (marks.empty()) return s;
    std::string out;
    size_t pos = 0;
    for (size_t m : marks) {
        out.append(s, pos, m - pos);
        out += "CUDASIM_HOST_CODE ";
        pos = m;
    }
    out.append(s, pos, std::string::npos);
    return out;
}

inline std::string resolve_cuda_arch(const std::string& s) {
    const std::string name = "__CUDA_ARCH__";
    if (s.find(name) == std::string::npos) return s;
    SourceScopes scopes = scan_scopes(s);
    const std::string& code = scopes.code;
    using Directive = SourceScopes::Directive;
    std::vector<Directive>& directives = scopes.directives;
    // Conditional groups that mention __CUDA_ARCH__: rewrite their directives.
    std::vector<std::string> replacement(directives.size());
    std::vector<bool> replaced(directives.size(), false);
    std::vector<std::vector<size_t>> open;  // per open group: its directives (#if, #elif..., #else)
    auto empty_between = [&](size_t a, size_t b) {  // only blanks between directives a and b
        return code.find_first_not_of(" \t\r\n\\", directives[a].end) >= directives[b].begin;
    };
    for (size_t d = 0; d < directives.size(); d++) {
        const std::string& kw = directives[d].keyword;
        if (kw == "if" || kw == "ifdef" || kw == "ifndef") open.push_back({d});
        else if ((kw == "elif" || kw == "else") && !open.empty()) open.back().push_back(d);
        else if (kw == "endif" && !open.empty()) {
            std::vector<size_t> group = open.back();
            open.pop_back();
            std::vector<std::string> cond;  // each branch's condition as an #if expression
            bool mentions = false;
            for (size_t g : group) {
                const Directive& x = directives[g];
                std::string name_arg = trim(x.rest);
                if (x.keyword == "ifdef") cond.push_back("defined(" + name_arg + ")");
                else if (x.keyword == "ifndef") cond.push_back("!defined(" + name_arg + ")");
                else if (x.keyword == "else") cond.push_back("1");
                else cond.push_back(x.rest);
                mentions = mentions || has_token(x.rest, name);
            }
            if (!mentions) continue;
            char scope = directives[group[0]].scope;
            std::vector<std::string> dev, host;
            for (const std::string& c : cond) {
                dev.push_back("(" + arch_condition(c, true) + ")");
                host.push_back("(" + arch_condition(c, false) + ")");
            }
            auto selects = [&](const std::vector<std::string>& view, size_t b) {  // view picks branch b
                std::string e;
                for (size_t a = 0; a < b; a++) e += "!" + view[a] + " && ";
                return "(" + e + view[b] + ")";
            };
            std::vector<std::string> out(group.size());
            if (scope == 'd') out = dev;
            if (scope == 'n') {
                std::vector<size_t> ends = group;
                ends.push_back(d);
                std::string host_code;  // the host pass selects a branch that is not empty
                for (size_t b = 0; b < group.size(); b++)
                    if (!empty_between(ends[b], ends[b + 1]))
                        host_code += (host_code.empty() ? "" : " || ") + selects(host, b);
                for (size_t b = 0; b < group.size(); b++)
                    out[b] = empty_between(ends[b], ends[b + 1]) ? "0" :
                             "(" + selects(host, b) + " || (" + selects(dev, b) + " && !(" +
                             (host_code.empty() ? "0" : host_code) + ")))";
            }
            if (scope == 'f' || scope == 'h') continue;  // the host pass: as written
            for (size_t b = 0; b < group.size(); b++) {
                replacement[group[b]] = (b == 0 ? "#if " : "#elif ") + out[b];
                replaced[group[b]] = true;
            }
        }
    }
    // Assemble: replaced directives (one line, then the continuation lines' newlines); in device-only bodies
    // the token elsewhere becomes CUDASIM_CUDA_ARCH.
    std::string result;
    size_t pos = 0;
    auto copy_code = [&](size_t a, size_t b) {
        for (size_t i = a; i < b;) {
            if (scopes.at[i] == 'd' && code.compare(i, name.size(), name) == 0 &&
                (i == 0 || !is_ident_char(code[i - 1])) &&
                !is_ident_char(code[i + name.size()])) {
                result += "CUDASIM_CUDA_ARCH";
                i += name.size();
                continue;
            }
            result += s[i++];
        }
    };
    for (size_t d = 0; d < directives.size(); d++) {
        const Directive& x = directives[d];
        copy_code(pos, x.begin);
        if (replaced[d]) {
            result += replacement[d];
            for (size_t i = x.begin; i < x.end; i++)
                if (s[i] == '\n') result += '\n';
        } else {
            result.append(s, x.begin, x.end - x.begin);
        }
        pos = x.end;
    }
    copy_code(pos, s.size());
    return result;
}

// clock() in device code is the multiprocessor's cycle counter; in host code, the C library's process CPU time.
// nvcc's device pass knows which is meant; here both are one function, so a call `clock(` in the body of a
// device-only or `__host__ __device__` function becomes `cudasim_clock(` (dev/cudasim_intrinsics.h: the virtual
// device's cycles inside a kernel, the C library's clock() outside one). A macro cannot do this: <ctime>
// `#undef`s clock, and a sample that includes it after cudasim spun on host CPU time in its "10 ms" kernels.
// `.clock(`, `->clock(` (members) and `clock` not followed by `(` are left alone.
inline std::string resolve_device_clock(const std::string& s) {
    const std::string name = "clock";
    if (s.find(name) == std::string::npos) return s;
    SourceScopes scopes = scan_scopes(s);
    const std::string& code = scopes.code;
    std::string out;
    size_t pos = 0;
    for (size_t i = code.find(name); i != std::string::npos; i = code.find(name, i + name.size())) {
        char scope = scopes.at[i];
        if (scope != 'd' && scope != 'f') continue;
        if ((i > 0 && is_ident_char(code[i - 1])) || is_ident_char(code[i + name.size()])) continue;
        size_t before = code.find_last_not_of(" \t\r\n", i == 0 ? 0 : i - 1);
        if (i > 0 && before != std::string::npos &&
            (code[before] == '.' || (code[before] == '>' && before > 0 && code[before - 1] == '-')))
            continue;
        size_t paren = code.find_first_not_of(" \t\r\n", i + name.size());
        if (paren == std::string::npos || code[paren] != '(') continue;
        out.append(s, pos, i - pos);
        out += "cudasim_clock";
        pos = i + name.size();
    }
    if (pos == 0) return s;
    out.append(s, pos, std::string::npos);
    return out;
}

inline std::string rewrite_cuda_source(const std::string& s, const KernelTable* table = nullptr) {
    std::string out;
    out.reserve(s.size() + 256);
    std::map<size_t, std::string> registrations;  // position just after a kernel's closing brace -> its registration
    std::string pending_bounds;  // the thread limit of a __launch_bounds__ kernel whose body comes next
    int bounds_depth = 0;
    size_t i = 0;
    while (i < s.size()) {
        if (!registrations.empty() && i >= registrations.begin()->first) {
            out += registrations.begin()->second;
            registrations.erase(registrations.begin());
        }
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
                out += "_Pragma(\"GCC error \\\"cudasim: inline PTX (asm) cannot run on the CPU; give it a plain C++ "
                       "fallback under #ifdef CUDASIM (device code sees __CUDA_ARCH__ as 800 here)\\\"\") ";
                break;
            }
        }
        if (s.compare(i, 6, "extern") == 0 && (i == 0 || !is_ident_char(s[i - 1])) && !is_ident_char(s[i + 6])) {
            // `extern __shared__ T x[];` and `extern T __shared__ x[];` (the qualifier after the type)
            size_t semi = s.find(';', i);
            std::string decl = semi == std::string::npos ? "" : s.substr(i + 6, semi - i - 6);
            size_t q = decl.find("__shared__");
            if (q != std::string::npos && trim(decl)[0] != '"' && decl.find_first_of("{}") == std::string::npos &&
                has_token(decl, "__shared__")) {
                decl.erase(q, 10);
                out += rewrite_extern_shared(decl);
                i = semi;  // the ';' is copied next
                continue;
            }
        }
        // after a non-template kernel's definition: its registration for launches with `void** args`
        if (table && s.compare(i, 10, "__global__") == 0 && (i == 0 || !is_ident_char(s[i - 1])) &&
            !is_ident_char(s[i + 10]) && !has_token(declaration_head(s, i), "template")) {
            size_t open = s.find('(', i), brace = s.find_first_of(";{", i);
            if (open != std::string::npos && brace != std::string::npos && open < brace) {
                size_t name_end = open;
                while (name_end > i && std::isspace(static_cast<unsigned char>(s[name_end - 1]))) name_end--;
                size_t name_start = name_end;
                while (name_start > i && is_ident_char(s[name_start - 1])) name_start--;
                std::string name = s.substr(name_start, name_end - name_start);
                size_t close = matching_bracket(s, open);
                size_t body = close == std::string::npos ? close : s.find_first_not_of(" \t\r\n", close + 1);
                auto it = table->find(name);
                if (body != std::string::npos && s[body] == '{' && it != table->end() && it->second.definitions == 1 &&
                    name != "__launch_bounds__") {
                    size_t end = matching_bracket(s, body);
                    if (end != std::string::npos) {
                        std::string params = strip_defaults(s.substr(open + 1, close - open - 1));
                        registrations[end + 1] = " [[maybe_unused]] static const bool cudasim_registered_" + name +
                                                 " = ::cudasim::register_kernel(static_cast<void (*)(" + params +
                                                 ")>(" + name + "), \"" + name + "\");";
                    }
                }
            }
        }
        if (s.compare(i, 10, "__shared__") == 0 && (i == 0 || !is_ident_char(s[i - 1])) && !is_ident_char(s[i + 10])) {
            // `__shared__ alignas(N) T x[..]`: nvcc accepts it; in C++ (`static thread_local alignas(N) T`) an
            // attribute may not stand between decl-specifiers, so it moves in front of the qualifier.
            size_t after = i + 10;
            std::string attributes;
            for (;;) {
                size_t a = s.find_first_not_of(" \t", after);
                if (a == std::string::npos || s.compare(a, 7, "alignas") != 0 || is_ident_char(s[a + 7])) break;
                size_t open = s.find_first_not_of(" \t", a + 7);
                size_t close = open != std::string::npos && s[open] == '(' ? matching_bracket(s, open)
                                                                            : std::string::npos;
                if (close == std::string::npos) break;
                attributes += s.substr(a, close + 1 - a) + " ";
                after = close + 1;
            }
            size_t semi = s.find(';', after);
            if (semi != std::string::npos) {
                std::string decl = s.substr(after, semi - after);
                std::string rewritten = decl.find('\n') == std::string::npos ? rewrite_shared(decl) : "";
                if (!rewritten.empty()) {  // one-line declarations only: lines stay in place
                    out += attributes + "__shared__" + rewritten;
                    i = semi;  // the ';' is copied next
                    continue;
                }
            }
            if (!attributes.empty()) {
                out += attributes + "__shared__";
                i = after;
                continue;
            }
        }
        // `__launch_bounds__(N, ...)`: the macro expands to nothing; the kernel's body starts with a check
        // that the block has at most N threads (a GPU refuses the launch otherwise).
        if (s.compare(i, 17, "__launch_bounds__") == 0 && (i == 0 || !is_ident_char(s[i - 1])) &&
            !is_ident_char(s[i + 17])) {
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
            std::string config = s.substr(i + 3, cfg_end - i - 3);
            switch (launch_form(table, name)) {
                case LaunchForm::pointer:
                    out += "::cudasim::launch(" + name + ", \"" + quoted + "\", " + config + ")";
                    break;
                case LaunchForm::typed_pointer:
                    out += "::cudasim::launch(static_cast<void (*)(" + table->at(name).params + ")>(" + name + "), \"" +
                           quoted + "\", " + config + ")";
                    break;
                case LaunchForm::call:
                    out += "::cudasim::launch_call([](auto&... cudasim_args) { " + name + "(cudasim_args...); }, \"" +
                           quoted + "\", " + config + ")";
                    break;
            }
            i = cfg_end + 3;
            // The arguments: `NULL` (an integer in g++) becomes `nullptr`, since the launcher passes arguments
            // on as values, where a null pointer constant is no longer one (nvcc converts it in the call).
            size_t open = s.find_first_not_of(" \t\r\n", i);
            size_t close = open != std::string::npos && s[open] == '(' ? matching_bracket(s, open) : std::string::npos;
            if (close != std::string::npos) {
                std::string args = s.substr(i, close + 1 - i);
                for (size_t p = 0; (p = args.find("NULL", p)) != std::string::npos; p += 4)
                    if ((p == 0 || !is_ident_char(args[p - 1])) &&
                        (p + 4 >= args.size() || !is_ident_char(args[p + 4])))
                        args.replace(p, 4, "nullptr");
                out += args;
                i = close + 1;
            }
            continue;
        }
        out += s[i++];
    }
    for (auto& [pos, text] : registrations) out += text;
    return out;
}

}  // namespace cudasim
