// The loop's private buffer pool: large per-call buffers reused across calls.
//
// Part of the compiled CPU recurrence: included once, by recurrent.cpp, which is the one
// translation unit (one unit keeps the cold build short and lets the compiler inline across
// files); the map of the files is at the top of recurrent.cpp.
#pragma once

#include "common.h"

#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <map>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace seqlab {
namespace {

// A buffer of the time loop that only the kernels see (saved activations, the backward's
// per-step gradients). These are T*B rows of up to G*H values, allocated fresh every call:
// from the system allocator, a buffer of megabytes is often mapped anew each time (glibc
// maps large blocks and trims its heap when they are freed), so the loop first touches
// fresh pages, one page fault and one zeroed page per 4 KiB. At (B, T, H) = (128, 50, 128)
// a LayerNorm-LSTM training step faulted in ~60 MB and spent about 18 of its 64 ms in the
// kernel. So buffers of 2 MiB and more come from a small pool instead: a freed buffer is
// kept (up to pool_max_bytes() in all) and handed to the next request of the same rounded
// size, which the next training step of the same shapes makes. Fresh blocks are 2 MiB
// aligned and advised as transparent huge pages (Linux "madvise" mode), so that even their
// first touch costs 1 fault per 2 MiB. Smaller buffers, and what the caller gets back as its
// own (y, h_T, c_T), use at::empty.
constexpr size_t POOL_PAGE = size_t(2) << 20;
// What the pool may keep while nothing uses it: SEQLAB_POOL_MB (read once; 0 turns the pool
// off), default 512 MiB, enough for the buffers of one LSTM step at (64, 100, 512).
size_t pool_max_bytes() {
  static const size_t cap = [] {
    const char* env = std::getenv("SEQLAB_POOL_MB");
    const long long mb = env && *env ? std::atoll(env) : 512;
    return static_cast<size_t>(mb > 0 ? mb : 0) << 20;
  }();
  return cap;
}

class BufferPool {
 public:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        held_ -= bytes;
        return p;
      }
    }
    void* p = std::aligned_alloc(POOL_PAGE, bytes);  // bytes is a multiple of POOL_PAGE
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: where refused the pages are small
#endif
    return p;
  }
  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (held_ + bytes <= pool_max_bytes()) {
        free_.emplace(bytes, p);
        held_ += bytes;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // rounded size -> block
  size_t held_ = 0;
};

// never destroyed: tensors may release their buffers during static destruction at exit
BufferPool& pool() {
  static BufferPool* p = new BufferPool();
  return *p;
}

Tensor loop_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * opts.dtype().itemsize();
  if (bytes >= POOL_PAGE) {
    const size_t rounded = (bytes + POOL_PAGE - 1) / POOL_PAGE * POOL_PAGE;
    if (void* p = pool().take(rounded)) {
      // resizable like at::empty's storage: resize_ (or out= of another shape) moves the data
      // to memory from the CPU allocator and hands this block back to the pool
      return at::for_blob(p, sizes)
          .deleter([rounded](void* q) { pool().give(q, rounded); })
          .options(opts)
          .resizeable_storage()
          .allocator(c10::GetCPUAllocator())
          .make_tensor();
    }
  }
  return at::empty(sizes, opts);
}

}  // namespace
}  // namespace seqlab
