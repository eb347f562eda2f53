// Matrix products and their policy: MKL, a dlsym-loaded BLAS, oneDNN's linear and brgemm.
//
// Part of the compiled CPU recurrence: included once, by recurrent.cpp, which is the one
// translation unit (one unit keeps the cold build short and lets the compiler inline across
// files); the map of the files is at the top of recurrent.cpp.
#pragma once

#include "buffer_pool.h"
#include "pointwise.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/CPUBlas.h>

#include <limits>

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

namespace seqlab {
namespace {

// ---------------------------------------------------------------------------------------
// Matrix products: y = x W^T (+ bias), W in nn.Linear's (out, in) form.
//
// Two kinds. The products over all T*B rows (input projection, weight gradients, dx) are
// long and few: MKL (at::mm), the projection written into a pooled buffer (project_rows),
// because oneDNN's linear only returns fresh outputs, and at T*B rows first-touching a fresh
// output costs about as much as the product (it also copies transposed operands before a
// weight gradient).
//
// The per-step products of the time loop (StepLinear) are small and many: float32 ones go to
// oneDNN (mkldnn::_linear_pointwise, the op inductor uses for CPU linear layers) with W
// packed once per call, when torch was built with it and the product is large enough; oneDNN
// is also what torch.nn.LSTM uses on CPU. Below the threshold its per-call overhead (~15 us)
// costs more than it saves. float64 and small products use MKL. set_gemm_threshold (an op,
// for tests and benchmarks) moves the threshold: 0 = always oneDNN for float32, -1 = never.
//
// The default depends on the CPU: oneDNN's JIT kernels use AVX-512 and MKL's code path for AMD
// CPUs does not, so with AVX-512 the per-step products go to oneDNN; with AVX2 only, MKL is as
// fast or faster at every size of benchmarks/recurrent.py's grid, so they stay on MKL.
//
// On one thread with AVX-512 both the projection and the per-step products go to oneDNN's
// brgemm micro-kernel instead (at::native::cpublas::brgemm, what inductor's CPU GEMM templates
// call): no packing, no fresh output, less overhead per call than MKL, and JIT code for the
// exact shape; only for weights of up to 2M values, because larger ones do not stay in cache
// (kBrgemmMaxWeight). One call runs in one thread (it is not split here), so with more threads
// the long products (projection, dx) stay on MKL and the large per-step ones on oneDNN's
// linear, which use the threads; the small per-step ones, which MKL does not speed up with
// threads, stay on brgemm. With AVX2 only (or oneDNN capped by ONEDNN_MAX_CPU_ISA=AVX2) brgemm
// is slower than MKL at k >= 256, so it is off there.
// set_brgemm (an op, for tests and benchmarks): 1 = always for float32, 0 = never, -1 = auto.

bool cpu_has_avx512() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

int64_t default_dnn_threshold() {
  return cpu_has_avx512() ? int64_t(1) << 21 : -1;  // m*n*k multiply-adds
}

int64_t g_dnn_threshold = default_dnn_threshold();

struct OneDNN {
  c10::optional<c10::OperatorHandle> linear, reorder;
  OneDNN() {
    auto& d = c10::Dispatcher::singleton();
    auto l = d.findSchema({"mkldnn::_linear_pointwise", ""});
    auto r = d.findSchema({"mkldnn::_reorder_linear_weight", ""});
    if (l && r && l->hasKernelForDispatchKey(c10::DispatchKey::CPU) &&
        r->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
      linear = l;
      reorder = r;
    }
  }
};

const OneDNN& onednn() {
  static const OneDNN o;
  return o;
}

// Packing W for oneDNN takes a tenth to half a millisecond and saves 10-30% of each product
// that reads it, so it pays only above a break-even of T*m*n*k near 50-67M multiply-adds
// (kDnnAmortize); below it MKL is faster. A one-step call (generation)
// never amortizes the packing. `uses` is how many products read the packed W (T for a time
// loop). A threshold of 0 forces oneDNN (tests).
constexpr int64_t kDnnAmortize = int64_t(1) << 27;

bool use_dnn(const Tensor& x, int64_t m, int64_t n, int64_t k, int64_t uses) {
  if (x.scalar_type() != at::kFloat || g_dnn_threshold < 0 || !onednn().linear.has_value()) return false;
  return g_dnn_threshold == 0 || (m * n * k >= g_dnn_threshold && uses * m * n * k >= kDnnAmortize);
}

// W reordered into oneDNN's blocked layout for a batch of m rows (once per call, used T times)
Tensor dnn_pack(const Tensor& w, int64_t m) {
  torch::jit::Stack s{w.contiguous(), c10::IValue(m)};
  onednn().reorder->callBoxed(&s);
  return s[0].toTensor();
}

Tensor dnn_linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  torch::jit::Stack s{x, w, bias.defined() ? c10::IValue(bias) : c10::IValue(), c10::IValue(std::string("none")),
                      c10::IValue(c10::List<c10::optional<c10::Scalar>>()), c10::IValue()};
  onednn().linear->callBoxed(&s);
  return s[0].toTensor();
}

int64_t g_brgemm = -1;

int64_t set_brgemm(int64_t mode) {
  TORCH_CHECK(mode >= -1 && mode <= 1, "set_brgemm: expected -1 (auto), 0 (never) or 1 (always), got ", mode);
  const int64_t old = g_brgemm;
  g_brgemm = mode;
  return old;
}

// Whether auto mode takes brgemm on this machine (for which products: use_brgemm, StepLinear)
bool brgemm_auto() {
  static const bool avx512 = cpu_has_avx512();
  return avx512 && at::globalContext().userEnabledMkldnn();
}

// brgemm reads W^T (k, n) row by row: for a forward W that is a copy of n*k values per call,
// which pays only when enough rows read it (a one-step call at batch 1 would pay 50 us to
// transpose a 1024 x 256 W_hh and save 2 us); `free` when the caller's W^T is contiguous already
constexpr int64_t kBrgemmRows = 128;
// brgemm does no cache blocking of W: once W^T outgrows the L2 cache it is slower than MKL. Same
// machine, time against MKL's: 0.82-0.99 up to 2M values (k x n = 1024 x 2048, 2048 x 1024,
// 512 x 4096), 1.08-5.7 at 4M (1024 x 4096, 2048 x 2048, 4096 x 1024, 512 x 8192, 8192 x 512).
constexpr int64_t kBrgemmMaxWeight = int64_t(1) << 21;

// `w`: the product's weight in either orientation (k x n values); `rows`: how many rows read it.
// `parallel`: whether MKL or oneDNN would spread this product over the threads torch has; if so,
// brgemm (one thread) takes it only on one thread.
bool use_brgemm(const Tensor& w, int64_t rows, bool free, bool parallel = true) {
  if (w.scalar_type() != at::kFloat || g_brgemm == 0) return false;
  return g_brgemm == 1 || (brgemm_auto() && w.numel() <= kBrgemmMaxWeight && (free || rows >= kBrgemmRows) &&
                           (!parallel || at::get_num_threads() == 1));
}

// y (m, n) = x (m, k) wt (k, n), or y += under `acc`; all contiguous rows
SEQLAB_INLINE void brgemm(const float* x, const float* wt, float* y, int64_t m, int64_t n, int64_t k, bool acc) {
  if (m <= 0 || n <= 0) return;  // empty batch: nothing to compute (oneDNN refuses zero sizes)
  if (k <= 0) {
    if (!acc) std::fill(y, y + m * n, 0.f);
    return;
  }
  at::native::cpublas::brgemm(m, n, k, /*ld_a=*/k, /*ld_b=*/n, /*ld_c=*/n, acc, x, wt, y, /*is_vnni=*/false);
}

// a (N, K) @ b (K, M) over N = T*B rows: dx = da W_ih, where brgemm reads W_ih as it is stored
Tensor mm_rows(const Tensor& a, const Tensor& b) {
  if (!use_brgemm(b, a.size(0), /*free=*/true)) return at::mm(a, b);
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  brgemm(ac.data_ptr<float>(), bc.data_ptr<float>(), out.data_ptr<float>(), a.size(0), b.size(1), a.size(1), false);
  return out;
}

// x (T*B, k) @ w (n, k)^T + bias (n) into a pooled buffer, returned as `sizes` (n last)
Tensor project_rows(const Tensor& x, const Tensor& w, const Tensor& bias, at::IntArrayRef sizes) {
  Tensor out = loop_buffer(sizes, x.options());
  Tensor rows = out.view({x.size(0), w.size(0)});  // (..., n) -> (T*B, n)
  if (use_brgemm(w, x.size(0), false)) {
    const Tensor xc = x.contiguous(), wt = w.t().contiguous();  // (k, n)
    if (bias.defined()) rows.copy_(bias.expand_as(rows));
    brgemm(xc.data_ptr<float>(), wt.data_ptr<float>(), rows.data_ptr<float>(), rows.size(0), rows.size(1),
           xc.size(1), bias.defined());
  } else if (bias.defined()) {
    at::addmm_out(rows, bias, x, w.t());
  } else {
    at::mm_out(rows, x, w.t());
  }
  return out;
}

// a (N, M), b (N, K) -> a^T b (M, K): a weight gradient, a reduction over N = T*B rows
Tensor weight_grad(const Tensor& a, const Tensor& b) { return at::mm(a.t(), b); }

// The BLAS that ATen's own products call, called directly for the per-step products: the
// sgemm_ / dgemm_ (Fortran interface, 32-bit ints, as ATen declares them) of the library
// libtorch_cpu links, MKL in the x86 wheels. Through at::mm_out a step's product paid about
// 1.7 us of dispatch and argument checks on top of the 7.7 us of MKL's own work at (16, 64,
// 256), and the loop about 8 selects per step (~0.4 us each) for the tensors it handed in.
// The symbols are looked up in libtorch_cpu's own scope (dladdr of an ATen function), not in
// the process's global one, so that another BLAS loaded by something else (possibly with
// 64-bit ints) is never picked. Where the lookup fails (another OS, a torch without BLAS),
// the step uses at::mm_out, which computes the same; set_direct_blas(false) forces that.
using sgemm_fn = void(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                      const int*, const float*, const int*, const float*, float*, const int*);
using dgemm_fn = void(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                      const int*, const double*, const int*, const double*, double*, const int*);

struct Blas {
  sgemm_fn* s = nullptr;
  dgemm_fn* d = nullptr;
  Blas() {
#if defined(__linux__) || defined(__APPLE__)
    Dl_info info;
    if (!dladdr(reinterpret_cast<void*>(&at::_ops::mm::call), &info) || !info.dli_fname) return;
    void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);  // already loaded: no new copy
    if (!lib) return;
    s = reinterpret_cast<sgemm_fn*>(dlsym(lib, "sgemm_"));
    d = reinterpret_cast<dgemm_fn*>(dlsym(lib, "dgemm_"));
    dlclose(lib);  // drops the reference dlopen took; torch keeps the library loaded
#endif
  }
};

const Blas& blas() {
  static const Blas b;
  return b;
}

bool g_direct_blas = true;

bool set_direct_blas(bool on) {
  const bool old = g_direct_blas;
  g_direct_blas = on;
  return old;
}

bool has_direct_blas() { return blas().s != nullptr && blas().d != nullptr; }

// y (m, n) = x (m, k) W^T (+ y when accumulating) in BLAS's column-major terms: y^T = W x^T,
// where row-major W (n, k) read column-major is W^T (so "T") and row-major x is x^T ("N")
SEQLAB_INLINE void gemm(const float* w, const float* x, float* y, int m, int n, int k, bool acc) {
  const float one = 1, beta = acc ? 1 : 0;
  blas().s("T", "N", &n, &m, &k, &one, w, &k, x, &k, &beta, y, &n);
}
SEQLAB_INLINE void gemm(const double* w, const double* x, double* y, int m, int n, int k, bool acc) {
  const double one = 1, beta = acc ? 1 : 0;
  blas().d("T", "N", &n, &m, &k, &one, w, &k, x, &k, &beta, y, &n);
}

// One product of the time loop: the same W (n, k) for m rows every step, x and y contiguous
// rows. `w` may be a view (the backward passes W_hh^T as w_hh.t()): brgemm reads w^T, which is
// then w_hh itself, and the other paths take w.contiguous(). With oneDNN the weight is packed
// once and the result copied (or added) into y; else BLAS directly on the pointers (ATen's mm
// where there is no BLAS to call). `uses`: how many steps read W (T).
struct StepLinear {
  Tensor w, wt, packed;
  int64_t m = 0, n = 0, k = 0;
  bool brg = false, dnn = false, direct = false;
  StepLinear() = default;
  StepLinear(const Tensor& w_, int64_t m_, int64_t uses) : m(m_), n(w_.size(0)), k(w_.size(1)) {
    // On more threads only oneDNN's linear spreads a step's product over them; MKL does not pay
    // at these sizes (small products are several times faster on brgemm), so brgemm takes the
    // steps that oneDNN does not
    const bool dnn_ok = use_dnn(w_, m, n, k, uses);
    brg = !(dnn_ok && at::get_num_threads() > 1) &&
          use_brgemm(w_, uses * m, w_.t().is_contiguous(), /*parallel=*/false);
    if (brg) {
      wt = w_.t().contiguous();  // (k, n)
      return;
    }
    w = w_.contiguous();
    dnn = dnn_ok;
    if (dnn) packed = dnn_pack(w, m);
    const int64_t int_max = std::numeric_limits<int>::max();
    direct = !dnn && g_direct_blas && has_direct_blas() && m <= int_max && n <= int_max && k <= int_max;
  }
  // y = x W^T, or y += x W^T under `acc`
  template <typename T>
  void operator()(const T* x, T* y, bool acc = false) const {
    if constexpr (std::is_same_v<T, float>) {
      if (brg) return brgemm(x, wt.data_ptr<float>(), y, m, n, k, acc);
    }
    if (direct) return gemm(w.data_ptr<T>(), x, y, int(m), int(n), int(k), acc);
    const Tensor xt = at::from_blob(const_cast<T*>(x), {m, k}, w.options());
    Tensor yt = at::from_blob(y, {m, n}, w.options());
    if (dnn) {
      const Tensor r = dnn_linear(xt, packed, Tensor());
      if (acc) yt.add_(r);
      else yt.copy_(r);
    } else if (acc) {
      yt.addmm_(xt, w.t());
    } else {
      at::mm_out(yt, xt, w.t());
    }
  }
};

int64_t set_gemm_threshold(int64_t n) {
  const int64_t old = g_dnn_threshold;
  g_dnn_threshold = n;
  return old;
}

bool has_onednn() { return onednn().linear.has_value(); }

}  // namespace
}  // namespace seqlab
