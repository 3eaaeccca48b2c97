// CPU version of <cooperative_groups/reduce.h>: cg::reduce over a warp tile by butterfly shuffles, the
// same exchange pattern the GPU library uses, so every lane ends with the full result; over a coalesced
// group (any number of lanes) by a shuffle-down tree and a broadcast of rank 0's result.
#pragma once
#include <cooperative_groups.h>

namespace cooperative_groups {

template <class T>
struct plus {
    T operator()(T a, T b) const { return a + b; }
};
template <class T>
struct less {
    T operator()(T a, T b) const { return b < a ? b : a; }
};  // reduce -> min
template <class T>
struct greater {
    T operator()(T a, T b) const { return a < b ? b : a; }
};  // reduce -> max
template <class T>
struct bit_and {
    T operator()(T a, T b) const { return a & b; }
};
template <class T>
struct bit_or {
    T operator()(T a, T b) const { return a | b; }
};
template <class T>
struct bit_xor {
    T operator()(T a, T b) const { return a ^ b; }
};

template <class Group, class T, class Op>
T reduce(const Group& g, T value, Op op) {
    if constexpr (std::is_same_v<Group, coalesced_group>) {
        unsigned n = g.size(), rank = g.thread_rank();
        for (unsigned offset = 1; offset < n; offset *= 2) {
            T other = g.shfl_down(value, offset);
            if (rank + offset < n && rank % (2 * offset) == 0) value = op(value, other);
        }
        return g.shfl(value, 0);
    } else {
        for (unsigned offset = g.size() / 2; offset > 0; offset /= 2)
            value = op(value, g.shfl_xor(value, static_cast<int>(offset)));
        return value;
    }
}

}  // namespace cooperative_groups
