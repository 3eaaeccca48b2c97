// CPU version of <cooperative_groups/memcpy_async.h>: cg::memcpy_async copies at once (by the group's
// first thread; every thread calls it with the same arguments), and cg::wait(group) is the group's sync,
// after which every thread sees the copy — the ordering the GPU guarantees.
#pragma once
#include <cstring>
#include <cooperative_groups.h>

namespace cooperative_groups {

template <class Group>
void memcpy_async(const Group& group, void* dst, const void* src, std::size_t bytes) {
    if (group.thread_rank() == 0) std::memcpy(dst, src, bytes);
}
template <class Group, class T>
void memcpy_async(const Group& group, T* dst, std::size_t dst_count, const T* src, std::size_t src_count) {
    if (group.thread_rank() == 0)
        std::memcpy(static_cast<void*>(dst), static_cast<const void*>(src),
                    sizeof(T) * (dst_count < src_count ? dst_count : src_count));
}
template <class Group>
void wait(const Group& group) {
    group.sync();
}
template <unsigned Prior, class Group>
void wait_prior(const Group& group) {
    group.sync();
}

}  // namespace cooperative_groups
