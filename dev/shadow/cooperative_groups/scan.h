// CPU version of <cooperative_groups/scan.h>: prefix sums (or any associative op) over a warp tile or a
// coalesced group, by log2(size) shuffles up, as the GPU library does.
#pragma once
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>  // cg::plus and the other operators

namespace cooperative_groups {

// rank r gets op(x_0, ..., x_r)
template <class Group, class T, class Op>
T inclusive_scan(const Group& g, T value, Op op) {
    unsigned rank = g.thread_rank();
    for (unsigned d = 1; d < g.size(); d *= 2) {
        T lower = g.shfl_up(value, d);
        if (rank >= d) value = op(lower, value);
    }
    return value;
}
template <class Group, class T>
T inclusive_scan(const Group& g, T value) { return inclusive_scan(g, value, plus<T>()); }

// rank r gets op(x_0, ..., x_{r-1}); rank 0 gets T() (which is the identity for a sum)
template <class Group, class T, class Op>
T exclusive_scan(const Group& g, T value, Op op) {
    T inclusive = inclusive_scan(g, value, op);
    T lower = g.shfl_up(inclusive, 1);
    return g.thread_rank() == 0 ? T() : lower;
}
template <class Group, class T>
T exclusive_scan(const Group& g, T value) { return exclusive_scan(g, value, plus<T>()); }

}  // namespace cooperative_groups
