// The compiled CPU recurrence: the time loops of forward and backward for the Elman RNN,
// the GRU and the LSTM, with every variant of the kernel contract (kernels/common.py):
// LayerNorm (LN_ih, LN_hh, LN_c), recurrent dropout (rec), zoneout and padding (keep,
// keep_c), output masks (out) and the LSTM projection (w_hr).
//
// It is the same algorithm as kernels/fused.py (read its docstring first), moved to C++ so
// that a step costs its two matrix products plus ONE pass over the B*G*H pointwise values
// instead of a dozen dispatcher calls:
//
//   forward   xp = X W_ih^T                              one product over all T*B rows
//             per step: W_hh (m ⊙ h_{t-1})               BLAS or brgemm on raw pointers (StepLinear)
//                       LN_ih, gates, c_t, h_t, masks, LN_hh, LN_c   one loop per batch row
//   backward  per step: da_t from the saved gates, LN_hh', LN_c', LN_ih'   one loop per row
//                       dh_{t-1} = (dhp_t W_hh) ⊙ m + …   BLAS (StepLinear)
//             after the loop: dW_ih, dW_hh, dW_hr, biases, dx, each ONE product or reduction
//             over all T*B rows; the LN weights' gradients are summed in the loop, where the
//             normalised rows are at hand (no second pass over T*B rows to rebuild them).
//
// Pointwise rows are written as short loops over contiguous memory so that the compiler
// vectorises them (-O3); float uses an exp that vectorises (exp_f below), double std::exp.
// tanh(v) = 2σ(2v) - 1, like the fused path. The products use BLAS or oneDNN threads; the
// pointwise rows of a step are split over torch's threads when there are enough of them
// (for_rows), except in a backward that sums LayerNorm weight gradients over the rows.
//
// The ops are registered with the dispatcher (TORCH_LIBRARY) rather than through pybind11:
// the translation unit then needs no Python headers and builds in about half the time, and
// the ops are visible to torch.library (see kernels/compiled.py).
//
// Symbols (as common.py): T steps, B batch, I input size, H hidden, P = proj or H, G gates
// (4 LSTM i|f|g|o, 3 GRU r|z|n, 1 RNN), GH = G*H. All tensors are CPU, one dtype
// (float32 or float64); compiled.py checks shapes, dtypes and devices before calling.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

namespace seqlab {
namespace {

using at::Tensor;
using OptT = c10::optional<Tensor>;

constexpr double LN_EPS = 1e-5;  // common.LN_EPS
enum Cell : int64_t { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU = 3 };

// Loops of these functions vectorise only when every call is inlined; in the larger loop bodies
// (minLSTM's backward) GCC's size heuristics stopped inlining them, leaving the loop scalar.
#if defined(__GNUC__)
#define SEQLAB_INLINE inline __attribute__((always_inline))
#else
#define SEQLAB_INLINE inline
#endif

// ---------------------------------------------------------------------------------------
// Scalar math. exp_f: Cephes' expf (range reduction to [-ln2/2, ln2/2], degree-6
// polynomial, 2^n by exponent bits): about 1 ulp, and branch-free so loops of it vectorise,
// which glibc's expf does not. Inputs are clamped to where expf is finite and normal.

SEQLAB_INLINE float exp_f(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

SEQLAB_INLINE float exp_(float x) { return exp_f(x); }
inline double exp_(double x) { return std::exp(x); }

template <typename T>
SEQLAB_INLINE T sigmoid_(T v) { return T(1) / (T(1) + exp_(-v)); }

template <typename T>
inline T tanh_(T v) { return T(2) / (T(1) + exp_(T(-2) * v)) - T(1); }  // 2σ(2v) - 1

// ---------------------------------------------------------------------------------------
// Row helpers: n contiguous values.

template <typename T>
void sigmoid_row(T* p, int64_t n) {
  for (int64_t j = 0; j < n; ++j) p[j] = sigmoid_(p[j]);
}

template <typename T>
void tanh_row(T* p, int64_t n) {
  for (int64_t j = 0; j < n; ++j) p[j] = tanh_(p[j]);
}

// Row reductions (the LayerNorm statistics and the sums of its backward) are plain loops that
// the compiler may reassociate, in these functions only (SEQLAB_REASSOCIATE). Without that, and
// without -ffast-math, it must keep one running sum in program order, which is scalar and bound
// by the add latency: that way the LayerNorm rows were the largest cost of the LayerNorm LSTM's
// step after the products. Reassociated, the loop keeps a vector of partial sums and folds it in
// registers. (Partial sums in a local array, the way before, were folded through the stack, and
// on an AVX-512 CPU ln_stats took 18% of LN-LSTM inference at hidden 64; now 14%.) They
// accumulate in double, also for float rows (the widening vectorises too): float sums would
// change the rounding that the float32 tests measure against the reference. The backward's two
// sums share one pass. Another compiler runs the loops in order: slower, same contract.
#if defined(__clang__)
#define SEQLAB_REASSOCIATE
#define SEQLAB_REASSOCIATE_BODY _Pragma("clang fp reassociate(on)")
#elif defined(__GNUC__)
#define SEQLAB_REASSOCIATE __attribute__((optimize("associative-math", "no-signed-zeros")))
#define SEQLAB_REASSOCIATE_BODY
#else
#define SEQLAB_REASSOCIATE
#define SEQLAB_REASSOCIATE_BODY
#endif

// mean and rstd = (var + eps)^{-1/2} of v[0:n]: two passes (the variance of v - mean)
template <typename T>
SEQLAB_REASSOCIATE void ln_stats(const T* v, int64_t n, T& mean, T& rstd) {
  SEQLAB_REASSOCIATE_BODY
  double s = 0, q = 0;
  for (int64_t j = 0; j < n; ++j) s += static_cast<double>(v[j]);
  const double m = s / n;
  for (int64_t j = 0; j < n; ++j) {
    const double d = v[j] - m;
    q += d * d;
  }
  mean = static_cast<T>(m);
  rstd = static_cast<T>(1.0 / std::sqrt(q / n + LN_EPS));
}

// s1 = Σ dv̂ and s2 = Σ dv̂ ⊙ v̂ of one row in one pass, dv̂ = dout ⊙ w, v̂ = (v - m) r
template <typename T>
SEQLAB_REASSOCIATE void ln_backward_sums(const T* dout, const T* v, int64_t n, const T* w, T m, T r, double& s1,
                                         double& s2) {
  SEQLAB_REASSOCIATE_BODY
  double a = 0, b = 0;
  for (int64_t j = 0; j < n; ++j) {
    const T g = dout[j] * w[j];
    a += static_cast<double>(g);
    b += static_cast<double>(g * ((v[j] - m) * r));
  }
  s1 = a;
  s2 = b;
}

// out[j] (+)= (v[j] - mean) rstd w[j] + b[j]   (b may be null: 0); the row's mean and rstd
// go to *mean_out / *rstd_out when given (the backward of LN_ih reads them)
template <typename T, bool ACCUMULATE>
void ln_apply(T* out, const T* v, int64_t n, const T* w, const T* b, T* mean_out = nullptr,
              T* rstd_out = nullptr) {
  T m, r;
  ln_stats(v, n, m, r);
  if (mean_out) { *mean_out = m; *rstd_out = r; }
  if (b) {
    for (int64_t j = 0; j < n; ++j) {
      const T y = (v[j] - m) * r * w[j] + b[j];
      if (ACCUMULATE) out[j] += y; else out[j] = y;
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const T y = (v[j] - m) * r * w[j];
      if (ACCUMULATE) out[j] += y; else out[j] = y;
    }
  }
}

// LayerNorm's backward for one row, exact with eps, from v and its (mean m, rstd r):
//   dv = r (dv̂ - mean(dv̂) - v̂ mean(dv̂ ⊙ v̂)),  v̂ = (v - m) r,  dv̂ = dout ⊙ w
// dv may alias dout. The weight and bias gradients, reductions over all T*B rows, are
// accumulated here while the row is in cache (dw += dout ⊙ v̂, db += dout; db only with dw;
// either may be null), in double: a float running sum over thousands of rows would lose digits.
template <typename T>
void ln_backward_row(T* dv, const T* dout, const T* v, int64_t n, const T* w, T m, T r, double* dw,
                     double* db) {
  double s1, s2;  // Σ dv̂, Σ dv̂ ⊙ v̂
  ln_backward_sums(dout, v, n, w, m, r, s1, s2);
  const T m1 = static_cast<T>(s1 / n), m2 = static_cast<T>(s2 / n);
  if (dw && db) {
    for (int64_t j = 0; j < n; ++j) {
      dw[j] += static_cast<double>(dout[j] * ((v[j] - m) * r));
      db[j] += static_cast<double>(dout[j]);
    }
  } else if (dw) {
    for (int64_t j = 0; j < n; ++j) dw[j] += static_cast<double>(dout[j] * ((v[j] - m) * r));
  }
  for (int64_t j = 0; j < n; ++j) dv[j] = r * (dout[j] * w[j] - m1 - (v[j] - m) * r * m2);
}

// the same, with the row's statistics recomputed from v (LN_hh and LN_c: saving them would
// cost more memory traffic than one vectorised pass over a row in cache)
template <typename T>
void ln_backward_row(T* dv, const T* dout, const T* v, int64_t n, const T* w, double* dw, double* db) {
  T m, r;
  ln_stats(v, n, m, r);
  ln_backward_row(dv, dout, v, n, w, m, r, dw, db);
}

// dst = a + k ⊙ (prev - a) = (1 - k) ⊙ a + k ⊙ prev, with k a row of n values or one
// value broadcast (ks = 0: the (T, B, 1) masks of eval-mode zoneout and padding)
template <typename T>
void lerp_row(T* dst, const T* a, const T* prev, const T* k, int64_t ks, int64_t n) {
  if (ks == 0) {
    const T kk = k[0];
    for (int64_t j = 0; j < n; ++j) dst[j] = a[j] + kk * (prev[j] - a[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = a[j] + k[j] * (prev[j] - a[j]);
  }
}

template <typename T>
const T* ptr_or_null(const OptT& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

bool given(const OptT& t) { return t.has_value() && t->defined(); }

// A (T, B, n) or (T, B, 1) mask, contiguous: row(t, b) and its stride ks (0 when broadcast).
template <typename T>
struct StepMask {
  const T* p = nullptr;
  int64_t n = 0, B = 0;
  StepMask(const OptT& t, int64_t B_) : B(B_) {
    if (given(t)) { p = t->data_ptr<T>(); n = t->size(2); }
  }
  explicit operator bool() const { return p != nullptr; }
  const T* row(int64_t t, int64_t b) const { return p + (t * B + b) * n; }
  int64_t ks() const { return n == 1 ? 0 : 1; }
};

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

Tensor contiguous_or_undef(const OptT& t) { return given(t) ? t->contiguous() : Tensor(); }

OptT opt(const Tensor& t) { return t.defined() ? OptT(t) : OptT(); }

Tensor add_opt(const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

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

// The pointwise work of one step, f(b0, b1) over batch rows [b0, b1), on torch's intra-op threads
// when the step has enough of it: a chunk gets at least kRowValues values (rows x width), so
// that the fork and join (about 1-2 us) stay small against it; fewer rows run in this thread.
// Each row is computed alone, so the result does not depend on the thread count. Parallel only
// when the extension is built with OpenMP (compiled.py: Linux), which then shares torch's own
// runtime; else at::parallel_for runs f(0, B) here.
constexpr int64_t kRowValues = 16384;

template <typename F>
void for_rows(int64_t B, int64_t width, const F& f) {
  at::parallel_for(0, B, std::max<int64_t>(1, kRowValues / std::max<int64_t>(width, 1)), f);
}

// ---------------------------------------------------------------------------------------
// forward
//
// x (T, B, I), h0 (B, P), c0 (B, H) LSTM only; w_ih (GH, I), w_hh (GH, P), b_ih / b_hh (GH),
// w_hr (P, H), ln_ih_* / ln_hh_* (GH), ln_c_* (H); keep (T, B, P|1), keep_c (T, B, H|1),
// out (T, B, 1), rec (B, P). save: keep what the backward needs (else per-step scratch).
//
// Returns [y (T,B,P), h_T (B,P), c_T (B,H) | undef,   then the saved tensors:
//          h_all (T,B,P), act (T,B,GH) the gates (LSTM i|f|g|o, GRU r|z|n, RNN h̃),
//          c_all (T,B,H), c_tilde (T,B,H), tau (T,B,H) = tanh(LN_c(c̃)), q (T,B,H) = o ⊙ tau
//          (projection only), hw_n (T,B,H) GRU, h_in (T,B,P) = m ⊙ h_{t-1} (rec only),
//          hp (T,B,GH) = W_hh h_in (LN_hh only), xp (T*B,GH), xp_mean, xp_rstd (LN_ih only)]
// with undefined tensors for what the call does not have.

enum Saved { S_H_ALL = 0, S_ACT, S_C_ALL, S_C_TILDE, S_TAU, S_Q, S_HW_N, S_H_IN, S_HP, S_XP, S_XP_MEAN,
             S_XP_RSTD, N_SAVED };

std::vector<Tensor> rnn_forward(
    int64_t cell, const Tensor& x, const Tensor& h0, const OptT& c0_, const Tensor& w_ih, const Tensor& w_hh,
    const OptT& b_ih, const OptT& b_hh, const OptT& w_hr, const OptT& ln_ih_w, const OptT& ln_ih_b,
    const OptT& ln_hh_w, const OptT& ln_hh_b, const OptT& ln_c_w, const OptT& ln_c_b, const OptT& keep_,
    const OptT& keep_c_, const OptT& out_, const OptT& rec_, bool save) {
  // The kernel differentiates itself: the ATen calls inside it (a few selects and products per
  // step) skip the autograd and view-tracking layers, which otherwise cost about as much as a
  // small step's pointwise work
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  const int64_t GH = w_ih.size(0), P = h0.size(1);
  const bool lstm = cell == LSTM, gru = cell == GRU;
  const int64_t H = GH / (lstm ? 4 : gru ? 3 : 1);
  const bool proj = given(w_hr), ln_hh = given(ln_hh_w), ln_c = given(ln_c_w);
  const auto opts = x.options();
  TORCH_CHECK(T > 0, "seqlab compiled forward: expected T > 0, got ", T);

  // xw_t = LN_ih(W_ih x_t) + b_ih, all steps in one product; for the LSTM and the RNN b_hh
  // is folded in too (it is added after LN_hh, so it only shifts xw + hw); the GRU keeps
  // b_hh in hw, where r multiplies its n block.
  const Tensor x_rows = x.reshape({T * B, I});  // (T, B, I) -> (T*B, I)
  const Tensor b_x = add_opt(b_ih.value_or(Tensor()), gru ? Tensor() : b_hh.value_or(Tensor()));
  std::vector<Tensor> res(3 + N_SAVED);
  const bool ln_ih = given(ln_ih_w);
  Tensor act, xp, x_mean, x_rstd, b_xln, b_xc;
  if (ln_ih) {
    // LN_ih is applied row by row inside the step loop, just before the step reads the row:
    // a separate ATen layer_norm over all T*B rows would write and read xw through memory
    // once more (and allocate it). act starts empty; each step fills its rows first.
    xp = project_rows(x_rows, w_ih, Tensor(), {T * B, GH});  // (T*B, I) @ (I, GH)
    act = save ? loop_buffer({T, B, GH}, opts) : at::empty({T, B, GH}, opts);  // (RNN: may be y)
    x_mean = at::empty({T * B, 1}, opts);  // per-row statistics, as native_layer_norm returns them
    x_rstd = at::empty({T * B, 1}, opts);
    b_xln = add_opt(ln_ih_b.value_or(Tensor()), b_x);
    if (b_xln.defined()) b_xln = b_xln.contiguous();
    if (save) {
      res[3 + S_XP] = xp;
      res[3 + S_XP_MEAN] = x_mean;
      res[3 + S_XP_RSTD] = x_rstd;
    }
  } else {
    // (T*B, I) @ (I, GH) -> (T, B, GH); becomes the gates in place. The bias is added in the
    // step loop, to rows about to be read anyway: addmm_out would first copy it into all T*B
    // rows, one more pass over memory (2-4% of an LSTM inference call at hidden 64-256)
    act = project_rows(x_rows, w_ih, Tensor(), {T, B, GH});
    if (b_x.defined()) b_xc = b_x.contiguous();
  }

  const Tensor keep = contiguous_or_undef(keep_), keep_c = contiguous_or_undef(keep_c_);
  const Tensor rec = contiguous_or_undef(rec_);
  const Tensor c0 = lstm ? c0_->contiguous() : Tensor();
  const Tensor h0c = h0.contiguous();
  const StepLinear lin_hh(w_hh, B, T), lin_hr = proj ? StepLinear(*w_hr, B, T) : StepLinear();
  const Tensor hw_buf = gru ? at::empty({B, GH}, opts) : Tensor();  // the GRU's W_hh h_in of a step
  const int64_t TS = save ? T : 1;  // leading size of buffers only the backward needs
  // under save every buffer is the kernels' own (y is a copy of h_all); without, h_all is y
  auto buf = [&](int64_t t0, int64_t n) { return save ? loop_buffer({t0, B, n}, opts) : at::empty({t0, B, n}, opts); };

  // the RNN's h̃_t is computed in place in act (and kept: act'(·) needs it); without keep it is h_t
  Tensor h_all = (!lstm && !gru && !keep.defined()) ? act : buf(T, P);
  Tensor c_all, c_tilde, tau, q, hw_n, h_in, hp, h_tilde;
  if (lstm) {
    c_all = buf(T, H);
    c_tilde = keep_c.defined() ? buf(TS, H) : c_all;
    tau = buf(TS, H);
    if (proj) q = buf(TS, H);
  }
  if (gru) {
    hw_n = buf(TS, H);
  }
  if (rec.defined()) h_in = buf(TS, P);
  if (ln_hh) hp = buf(TS, GH);
  if (keep.defined() || (lstm && proj)) h_tilde = at::empty({B, P}, opts);
  // b_hh after LN_hh, for the GRU (the LSTM and RNN have it in xw already)
  const Tensor b_hw = gru ? add_opt(ln_hh_b.value_or(Tensor()), b_hh.value_or(Tensor())).contiguous()
                          : (ln_hh && given(ln_hh_b) ? ln_hh_b->contiguous() : Tensor());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "seqlab_rnn_forward", [&] {
    using T_ = scalar_t;
    const StepMask<T_> mk(keep, B), mkc(keep_c, B);
    const T_* rec_p = rec.defined() ? rec.data_ptr<T_>() : nullptr;
    const T_* lnh_w = ln_hh ? ln_hh_w->data_ptr<T_>() : nullptr;
    const T_* lnh_b = b_hw.defined() ? b_hw.data_ptr<T_>() : nullptr;
    const T_* lnc_w = ln_c ? ln_c_w->data_ptr<T_>() : nullptr;
    const T_* lnc_b = ln_c ? ptr_or_null<T_>(ln_c_b) : nullptr;

    const T_* xp_p = ln_ih ? xp.data_ptr<T_>() : nullptr;
    const T_* lnx_w = ln_ih ? ln_ih_w->data_ptr<T_>() : nullptr;
    const T_* lnx_b = b_xln.defined() ? b_xln.data_ptr<T_>() : nullptr;
    const T_* bx_p = b_xc.defined() ? b_xc.data_ptr<T_>() : nullptr;  // b_ih (+ b_hh) without LN_ih
    T_* xm_p = ln_ih ? x_mean.data_ptr<T_>() : nullptr;
    T_* xr_p = ln_ih ? x_rstd.data_ptr<T_>() : nullptr;

    // the loop's tensors as raw pointers: step t's rows of a (T, B, n) buffer start at t * B * n
    auto ptr = [](const Tensor& v) { return v.defined() ? v.data_ptr<T_>() : nullptr; };
    const T_* h0_p = h0c.data_ptr<T_>();
    const T_* c0_p = ptr(c0);
    T_ *act_p = act.data_ptr<T_>(), *h_all_p = h_all.data_ptr<T_>(), *hw_p = ptr(hw_buf);
    T_ *c_all_p = ptr(c_all), *c_tilde_p = ptr(c_tilde), *tau_p = ptr(tau), *q_p = ptr(q);
    T_ *hw_n_p = ptr(hw_n), *h_in_p = ptr(h_in), *hp_p = ptr(hp), *h_tilde_p = ptr(h_tilde);

    for (int64_t t = 0; t < T; ++t) {
      const int64_t ts = save ? t : 0;
      const T_* hprev_p = t == 0 ? h0_p : h_all_p + (t - 1) * B * P;  // h_{t-1} (B, P)
      T_* act_t = act_p + t * B * GH;
      T_* h_t = h_all_p + t * B * P;

      // xw_t = LN_ih(W_ih x_t) + b_ih (+ b_hh): first, the LSTM / RNN product below adds to it
      if (xp_p) {
        for_rows(B, GH, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t row = t * B + b;
            ln_apply<T_, false>(act_t + b * GH, xp_p + row * GH, GH, lnx_w, lnx_b, xm_p + row, xr_p + row);
          }
        });
      } else if (bx_p) {
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = 0; j < GH; ++j) act_t[b * GH + j] += bx_p[j];
      }

      // hw_t = LN_hh(W_hh (m ⊙ h_{t-1})) + b_hh
      const T_* h_in_t = hprev_p;
      if (rec_p) {
        T_* d = h_in_p + ts * B * P;
        for (int64_t k = 0; k < B * P; ++k) d[k] = hprev_p[k] * rec_p[k];
        h_in_t = d;
      }
      // LN_hh's input hp_t, or the GRU's hw (its n block is needed apart), or else added to xw_t
      const T_* hp_t = nullptr;
      if (ln_hh) {
        T_* d = hp_p + ts * B * GH;
        lin_hh(h_in_t, d);  // (B, P) @ (P, GH)
        hp_t = d;
      } else if (gru) {
        lin_hh(h_in_t, hw_p);  // (B, P) @ (P, GH)
      } else {
        lin_hh(h_in_t, act_t, /*acc=*/true);  // a_t = xw_t + W_hh (m ⊙ h_{t-1})
      }

      if (lstm) {
        const T_* c_prev = t == 0 ? c0_p : c_all_p + (t - 1) * B * H;
        T_* ct = c_tilde_p + (keep_c.defined() ? ts : t) * B * H;
        T_* c_t = c_all_p + t * B * H;
        T_* tau_t = tau_p + ts * B * H;
        // o ⊙ τ goes to q (then W_hr), to h̃ (then keep), or straight to h_t
        T_* q_t = proj ? q_p + ts * B * H : (h_tilde_p ? h_tilde_p : h_t);
        for_rows(B, GH, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T_* a = act_t + b * GH;
            if (hp_t) ln_apply<T_, true>(a, hp_t + b * GH, GH, lnh_w, lnh_b);
            // i, f, g, o = σ, σ, tanh, σ of a
            T_ *i = a, *f = a + H, *g = a + 2 * H, *o = a + 3 * H;
            sigmoid_row(a, 2 * H);
            tanh_row(g, H);
            sigmoid_row(o, H);
            // c̃_t = f ⊙ c_{t-1} + i ⊙ g
            const T_* cp = c_prev + b * H;
            T_* c = ct + b * H;
            for (int64_t j = 0; j < H; ++j) c[j] = f[j] * cp[j] + i[j] * g[j];
            // τ = tanh(LN_c(c̃_t)); q = o ⊙ τ
            T_* tb = tau_t + b * H;
            if (ln_c) ln_apply<T_, false>(tb, c, H, lnc_w, lnc_b);
            else std::memcpy(tb, c, H * sizeof(T_));
            tanh_row(tb, H);
            T_* qb = q_t + b * H;
            for (int64_t j = 0; j < H; ++j) qb[j] = o[j] * tb[j];
            // c_t = kc ⊙ c_{t-1} + (1 - kc) ⊙ c̃_t
            if (mkc) lerp_row(c_t + b * H, c, cp, mkc.row(t, b), mkc.ks(), H);
          }
        });
        // h̃_t = W_hr (o ⊙ τ)
        if (proj) lin_hr(q_t, keep.defined() ? h_tilde_p : h_t);  // (B, H) @ (H, P)
      } else if (gru) {
        T_* hwn_t = hw_n_p + ts * B * H;
        T_* dst = h_tilde_p ? h_tilde_p : h_t;
        for_rows(B, GH, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T_* a = act_t + b * GH;
            T_* hwb = hw_p + b * GH;
            if (hp_t) ln_apply<T_, false>(hwb, hp_t + b * GH, GH, lnh_w, lnh_b);
            else if (lnh_b) for (int64_t j = 0; j < GH; ++j) hwb[j] += lnh_b[j];  // + b_hh
            // r, z = σ(xw_rz + hw_rz); n = tanh(xw_n + r ⊙ hw_n)
            for (int64_t j = 0; j < 2 * H; ++j) a[j] += hwb[j];
            sigmoid_row(a, 2 * H);
            T_ *r = a, *z = a + H, *n = a + 2 * H;
            const T_* hn = hwb + 2 * H;
            for (int64_t j = 0; j < H; ++j) n[j] += r[j] * hn[j];
            tanh_row(n, H);
            std::memcpy(hwn_t + b * H, hn, H * sizeof(T_));
            // h̃_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
            lerp_row(dst + b * H, n, hprev_p + b * P, z, 1, H);
          }
        });
      } else {
        const bool relu = cell == RNN_RELU;
        for_rows(B, GH, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            T_* a = act_t + b * GH;
            if (hp_t) ln_apply<T_, true>(a, hp_t + b * GH, GH, lnh_w, lnh_b);
            if (relu) {
              for (int64_t j = 0; j < H; ++j) a[j] = a[j] > T_(0) ? a[j] : T_(0);
            } else {
              tanh_row(a, H);
            }
          }
        });
      }

      // h_t = k_t ⊙ h_{t-1} + (1 - k_t) ⊙ h̃_t
      if (mk) {
        const T_* src = (lstm || gru) ? h_tilde_p : act_t;
        for (int64_t b = 0; b < B; ++b) lerp_row(h_t + b * P, src + b * P, hprev_p + b * P, mk.row(t, b), mk.ks(), P);
      }
    }
  });

  // y_t = o_t ⊙ h_t; a fresh tensor (not h_all) when the backward keeps h_all, so that a
  // caller may modify y in place
  if (given(out_)) res[0] = h_all * *out_;
  else res[0] = save ? h_all.clone() : h_all;
  res[1] = h_all[T - 1].clone();
  if (lstm) res[2] = c_all[T - 1].clone();
  if (save) {
    res[3 + S_H_ALL] = h_all;
    res[3 + S_ACT] = act;
    res[3 + S_C_ALL] = c_all;
    if (keep_c.defined()) res[3 + S_C_TILDE] = c_tilde;
    res[3 + S_TAU] = tau;
    res[3 + S_Q] = q;
    res[3 + S_HW_N] = hw_n;
    res[3 + S_H_IN] = h_in;
    res[3 + S_HP] = hp;
  }
  return res;
}

// ---------------------------------------------------------------------------------------
// backward
//
// saved: the N_SAVED tensors of the forward; x, h0, c0 and the 11 weights and 4 masks as
// given to the forward; dy (T, B, P), dh_T (B, P), dc_T (B, H) (each may be undefined:
// zero); need: 14 flags (0/1) for x, h0, c0 and the 11 weights in LayerWeights order.
// Returns the 14 gradients in that order, undefined where not needed.
//
//   dL/dh_t = dy_t ⊙ o_t + dL/dh_t from step t+1;   dh̃_t = (1 - k_t) ⊙ dL/dh_t
//   LSTM  dq = W_hr^T dh̃ (projection) or dh̃;  dτ' = dq ⊙ o ⊙ (1 - τ²), LN_c' on it
//         dc̃ = dτ'' + (1 - kc) ⊙ dc_t;  da_i = dc̃ g i(1-i), da_f = dc̃ c_{t-1} f(1-f),
//         da_g = dc̃ i (1-g²), da_o = dq τ o(1-o);  dc_{t-1} = f ⊙ dc̃ + kc ⊙ dc_t
//   GRU   dn' = dh̃ (1-z)(1-n²);  da = [dr', dz', dn'],  dhw = [dr', dz', dn' ⊙ r],
//         dr' = dn' hw_n r(1-r), dz' = dh̃ (h_{t-1} - n) z(1-z);  direct z ⊙ dh̃ to h_{t-1}
//   RNN   da = dh̃ ⊙ act'(h̃)
//   all   dhp = LN_hh'(dhw);  dh_{t-1} = (dhp W_hh) ⊙ m + k ⊙ dL/dh_t (+ GRU direct)

std::vector<Tensor> rnn_backward(
    int64_t cell, c10::List<c10::optional<Tensor>> saved_l, const Tensor& x, const Tensor& h0,
    const OptT& c0_, c10::List<c10::optional<Tensor>> w_l, c10::List<c10::optional<Tensor>> m_l,
    const Tensor& dy, const OptT& dh_T, const OptT& dc_T, c10::ArrayRef<int64_t> need) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in the forward
  auto get = [](const c10::List<c10::optional<Tensor>>& l, size_t k) -> Tensor {
    c10::optional<Tensor> v = l.get(k);
    return v.has_value() ? *v : Tensor();
  };
  TORCH_CHECK(saved_l.size() == N_SAVED && w_l.size() == 11 && m_l.size() == 4 && need.size() == 14,
              "seqlab compiled backward: expected 12 saved, 11 weights, 4 masks and 14 flags, got ",
              saved_l.size(), ", ", w_l.size(), ", ", m_l.size(), ", ", need.size());
  const Tensor h_all = get(saved_l, S_H_ALL), act = get(saved_l, S_ACT), c_all = get(saved_l, S_C_ALL);
  const Tensor tau = get(saved_l, S_TAU), q = get(saved_l, S_Q), hw_n = get(saved_l, S_HW_N);
  const Tensor h_in = get(saved_l, S_H_IN), hp = get(saved_l, S_HP), xp = get(saved_l, S_XP);
  const Tensor c_tilde = get(saved_l, S_C_TILDE).defined() ? get(saved_l, S_C_TILDE) : c_all;
  const Tensor w_ih = get(w_l, 0), w_hh = get(w_l, 1), w_hr = get(w_l, 4);
  const Tensor ln_ih_w = get(w_l, 5), ln_hh_w = get(w_l, 7), ln_c_w = get(w_l, 9);
  const Tensor keep = contiguous_or_undef(opt(get(m_l, 0))), keep_c = contiguous_or_undef(opt(get(m_l, 1)));
  const Tensor out = get(m_l, 2), rec = contiguous_or_undef(opt(get(m_l, 3)));
  enum { N_X = 0, N_H0, N_C0, N_W_IH, N_W_HH, N_B_IH, N_B_HH, N_W_HR, N_LN_IH_W, N_LN_IH_B, N_LN_HH_W, N_LN_HH_B,
         N_LN_C_W, N_LN_C_B };

  const int64_t T = act.size(0), B = act.size(1), GH = act.size(2), P = h_all.size(2), I = x.size(2);
  const bool lstm = cell == LSTM, gru = cell == GRU;
  const int64_t H = GH / (lstm ? 4 : gru ? 3 : 1);
  const bool proj = w_hr.defined(), ln_hh = ln_hh_w.defined(), ln_c = ln_c_w.defined();
  const auto opts = act.options();
  const Tensor h0c = h0.contiguous();
  const Tensor c0 = lstm ? c0_->contiguous() : Tensor();

  // dL/dh_t arriving from y_t; the loop adds what comes back from t+1 in place
  // owned and contiguous: the loop adds into it in place through raw pointers (dy is often a
  // strided view, e.g. the transposed output of a batch_first layer, and mul keeps its strides)
  Tensor dY = out.defined() ? at::mul(dy.contiguous(), out).contiguous() : dy.contiguous().clone();
  Tensor dh = given(dh_T) ? dh_T->contiguous().clone() : at::zeros({B, P}, opts);  // ends as dL/dh0
  Tensor dc = lstm ? (given(dc_T) ? dc_T->contiguous().clone() : at::zeros({B, H}, opts)) : Tensor();
  Tensor da = loop_buffer({T, B, GH}, opts);                    // dL/dxw_t
  Tensor dhw = gru ? loop_buffer({T, B, GH}, opts) : da;        // dL/dhw_t (after LN_hh and b_hh)
  Tensor dhp = ln_hh ? loop_buffer({T, B, GH}, opts) : dhw;     // dL/d(W_hh h_in)_t
  // dh̃_t per step: kept for dW_hr under the projection (dY itself holds it without keep)
  Tensor dht_all = keep.defined() ? (proj ? at::empty({T, B, P}, opts) : at::empty({1, B, P}, opts)) : dY;
  Tensor dq = (lstm && proj) ? at::empty({B, H}, opts) : Tensor();
  // dh = dhp W_hh is a linear with weight W_hh^T (P, GH), passed as a view (see StepLinear)
  const StepLinear lin_dh(w_hh.t(), B, T), lin_dq = (lstm && proj) ? StepLinear(w_hr.t(), B, T) : StepLinear();
  // dL/d LN_c(c̃_t) and dL/dc̃_t of a step, a row each (rows may run on different threads)
  Tensor dtau = ln_c ? at::empty({B, H}, opts) : Tensor();
  Tensor dct = lstm ? at::empty({B, H}, opts) : Tensor();
  // LN_ih's backward runs in the loop too, on each step's rows of da while they are in cache,
  // in place (da becomes dL/dxp) unless the recurrent side still reads da after the loop
  // (dhp is da without LN_hh)
  const bool ln_ih = ln_ih_w.defined();
  Tensor dxp = !ln_ih ? da : (dhp.is_same(da) ? loop_buffer({T, B, GH}, opts) : da);
  const Tensor xpc = ln_ih ? xp.contiguous() : Tensor();
  const Tensor x_mean = ln_ih ? get(saved_l, S_XP_MEAN).contiguous() : Tensor();
  const Tensor x_rstd = ln_ih ? get(saved_l, S_XP_RSTD).contiguous() : Tensor();
  // the LayerNorm weight and bias gradients, summed over all rows in the loop (double):
  // db_x = Σ da (b_ih, ln_ih_b: da is overwritten), dw_x = Σ da ⊙ x̂p, dw_h = Σ dhw ⊙ ĥp,
  // dw_c / db_c for LN_c
  std::vector<double> db_x(ln_ih ? GH : 0), dw_x(ln_ih ? GH : 0), dw_h(ln_hh ? GH : 0);
  std::vector<double> dw_c(ln_c ? H : 0), db_c(ln_c ? H : 0);
  Tensor direct = gru ? at::empty({B, H}, opts) : Tensor();      // z ⊙ dh̃ of the GRU

  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "seqlab_rnn_backward", [&] {
    using T_ = scalar_t;
    const StepMask<T_> mk(keep, B), mkc(keep_c, B);
    const T_* rec_p = rec.defined() ? rec.data_ptr<T_>() : nullptr;
    const T_* lnh_w = ln_hh ? ln_hh_w.data_ptr<T_>() : nullptr;
    const T_* lnc_w = ln_c ? ln_c_w.data_ptr<T_>() : nullptr;
    T_* dh_p = dh.data_ptr<T_>();
    T_* dct_p = lstm ? dct.data_ptr<T_>() : nullptr;
    T_* dtau_p = ln_c ? dtau.data_ptr<T_>() : nullptr;
    const T_* lnx_w = ln_ih ? ln_ih_w.data_ptr<T_>() : nullptr;
    const T_* xp_p = ln_ih ? xpc.data_ptr<T_>() : nullptr;
    const T_* xm_p = ln_ih ? x_mean.data_ptr<T_>() : nullptr;
    const T_* xr_p = ln_ih ? x_rstd.data_ptr<T_>() : nullptr;

    // the loop's tensors as raw pointers: step t's rows of a (T, B, n) buffer start at t * B * n
    auto ptr = [](const Tensor& v) { return v.defined() ? v.data_ptr<T_>() : nullptr; };
    const T_* h0_p = h0c.data_ptr<T_>();
    const T_* c0_p = ptr(c0);
    const T_ *act_p = act.data_ptr<T_>(), *h_all_p = h_all.data_ptr<T_>(), *c_all_p = ptr(c_all);
    const T_ *tau_p = ptr(tau), *c_tilde_p = ptr(c_tilde), *hw_n_p = ptr(hw_n), *hp_p = ptr(hp);
    T_ *dY_p = dY.data_ptr<T_>(), *dht_all_p = dht_all.data_ptr<T_>(), *da_p = da.data_ptr<T_>();
    T_ *dhw_p = dhw.data_ptr<T_>(), *dhp_p = dhp.data_ptr<T_>(), *dxp_p = dxp.data_ptr<T_>(), *dq_p0 = ptr(dq);
    T_ *dc_p = ptr(dc), *dir = ptr(direct);
    // a step's rows on torch's threads, as in the forward, unless a LayerNorm weight gradient
    // (a sum over rows) is accumulated in them
    auto step_rows = [&](const auto& f) {
      if (ln_hh || ln_c) f(int64_t(0), B);
      else for_rows(B, GH, f);
    };

    for (int64_t t = T - 1; t >= 0; --t) {
      // dL/dh_t = from y_t + from step t+1
      T_* dh_t = dY_p + t * B * P;
      for (int64_t k = 0; k < B * P; ++k) dh_t[k] += dh_p[k];
      // dh̃_t = (1 - k_t) ⊙ dL/dh_t
      const T_* dht_p = dh_t;
      if (mk) {
        T_* d = dht_all_p + (proj ? t : 0) * B * P;
        dht_p = d;
        for (int64_t b = 0; b < B; ++b) {
          const T_* k = mk.row(t, b);
          const int64_t ks = mk.ks();
          for (int64_t j = 0; j < P; ++j) d[b * P + j] = (T_(1) - k[j * ks]) * dh_t[b * P + j];
        }
      }
      const T_* a_t = act_p + t * B * GH;
      T_* da_t = da_p + t * B * GH;
      T_* dhw_t = dhw_p + t * B * GH;
      const T_* hp_t = ln_hh ? hp_p + t * B * GH : nullptr;
      T_* dhp_t = dhp_p + t * B * GH;

      if (lstm) {
        const T_* dq_p = dht_p;  // dq = W_hr^T dh̃ under the projection, else dh̃
        if (proj) {
          lin_dq(dht_p, dq_p0);  // (B, P) @ (P, H)
          dq_p = dq_p0;
        }
        const T_* c_prev = t == 0 ? c0_p : c_all_p + (t - 1) * B * H;
        const T_* tau_t = tau_p + t * B * H;
        const T_* ct_t = ln_c ? c_tilde_p + t * B * H : nullptr;
        step_rows([&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const T_* a = a_t + b * GH;
            const T_ *i = a, *f = a + H, *g = a + 2 * H, *o = a + 3 * H;
            T_* d = da_t + b * GH;
            T_ *d_i = d, *d_f = d + H, *d_g = d + 2 * H, *d_o = d + 3 * H;
            const T_* dqb = dq_p + b * H;
            const T_* tb = tau_t + b * H;
            // dτ' = dq ⊙ o ⊙ (1 - τ²) (into dct, or dtau under LN_c); da_o = dq ⊙ τ ⊙ o(1-o)
            T_* dctb = dct_p + b * H;
            T_* dtp = ln_c ? dtau_p + b * H : dctb;
            for (int64_t j = 0; j < H; ++j) {
              dtp[j] = dqb[j] * o[j] * (T_(1) - tb[j] * tb[j]);
              d_o[j] = dqb[j] * tb[j] * o[j] * (T_(1) - o[j]);
            }
            if (ln_c) ln_backward_row(dctb, dtp, ct_t + b * H, H, lnc_w, dw_c.data(), db_c.data());
            const T_* cp = c_prev + b * H;
            T_* dcb = dc_p + b * H;
            const T_* kc = mkc ? mkc.row(t, b) : nullptr;
            const int64_t kcs = mkc ? mkc.ks() : 0;
            for (int64_t j = 0; j < H; ++j) {
              const T_ kk = kc ? kc[j * kcs] : T_(0);
              const T_ dctj = dctb[j] + (T_(1) - kk) * dcb[j];  // dc̃_t
              d_i[j] = dctj * g[j] * i[j] * (T_(1) - i[j]);
              d_f[j] = dctj * cp[j] * f[j] * (T_(1) - f[j]);
              d_g[j] = dctj * i[j] * (T_(1) - g[j] * g[j]);
              dcb[j] = f[j] * dctj + kk * dcb[j];  // dc_{t-1}
            }
            if (ln_hh) ln_backward_row(dhp_t + b * GH, d, hp_t + b * GH, GH, lnh_w, dw_h.data(), nullptr);
          }
        });
      } else if (gru) {
        const T_* hprev = t == 0 ? h0_p : h_all_p + (t - 1) * B * P;
        const T_* hwn_t = hw_n_p + t * B * H;
        step_rows([&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const T_* a = a_t + b * GH;
            const T_ *r = a, *z = a + H, *n = a + 2 * H;
            const T_* dhb = dht_p + b * P;
            const T_* hn = hwn_t + b * H;
            const T_* hpv = hprev + b * P;
            T_* d = da_t + b * GH;
            T_* e = dhw_t + b * GH;
            T_* dr = dir + b * H;
            for (int64_t j = 0; j < H; ++j) {
              const T_ dn = dhb[j] * (T_(1) - z[j]) * (T_(1) - n[j] * n[j]);  // dn'
              const T_ drr = dn * hn[j] * r[j] * (T_(1) - r[j]);
              const T_ dzz = dhb[j] * (hpv[j] - n[j]) * z[j] * (T_(1) - z[j]);
              d[j] = drr; d[H + j] = dzz; d[2 * H + j] = dn;
              e[j] = drr; e[H + j] = dzz; e[2 * H + j] = dn * r[j];
              dr[j] = z[j] * dhb[j];
            }
            if (ln_hh) ln_backward_row(dhp_t + b * GH, e, hp_t + b * GH, GH, lnh_w, dw_h.data(), nullptr);
          }
        });
      } else {
        const bool relu = cell == RNN_RELU;
        step_rows([&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const T_* hb = a_t + b * GH;  // h̃_t
            const T_* dhb = dht_p + b * P;
            T_* d = da_t + b * GH;
            if (relu) {
              for (int64_t j = 0; j < H; ++j) d[j] = hb[j] > T_(0) ? dhb[j] : T_(0);
            } else {
              for (int64_t j = 0; j < H; ++j) d[j] = dhb[j] * (T_(1) - hb[j] * hb[j]);
            }
            if (ln_hh) ln_backward_row(dhp_t + b * GH, d, hp_t + b * GH, GH, lnh_w, dw_h.data(), nullptr);
          }
        });
      }

      // dh_{t-1} = (dhp_t W_hh) ⊙ m + k_t ⊙ dL/dh_t (+ z ⊙ dh̃_t for the GRU)
      lin_dh(dhp_t, dh_p);  // (B, GH) @ (GH, P)
      if (rec_p) for (int64_t k = 0; k < B * P; ++k) dh_p[k] *= rec_p[k];
      if (mk) {
        for (int64_t b = 0; b < B; ++b) {
          const T_* k = mk.row(t, b);
          const int64_t ks = mk.ks();
          for (int64_t j = 0; j < P; ++j) dh_p[b * P + j] += k[j * ks] * dh_t[b * P + j];
        }
      }
      if (gru) for (int64_t k = 0; k < B * P; ++k) dh_p[k] += dir[k];
      // dxp_t = LN_ih'(da_t), last: without LN_hh the product above read da_t as dhp_t
      if (ln_ih) {
        T_* dxp_t = dxp_p + t * B * GH;
        for (int64_t b = 0; b < B; ++b) {
          const int64_t row = t * B + b;
          ln_backward_row(dxp_t + b * GH, da_t + b * GH, xp_p + row * GH, GH, lnx_w, xm_p[row], xr_p[row],
                          dw_x.data(), db_x.data());
        }
      }
    }
  });

  std::vector<Tensor> g(14);
  auto rows = [](const Tensor& t) { return t.reshape({-1, t.size(-1)}); };  // (T, B, n) -> (T*B, n)
  if (need[N_H0]) g[N_H0] = dh;
  if (lstm && need[N_C0]) g[N_C0] = dc;
  // ---- recurrent weights: one product / reduction over all T*B rows ----
  if (need[N_W_HH]) {
    if (h_in.defined()) {
      g[N_W_HH] = weight_grad(rows(dhp), rows(h_in));  // (GH, T*B) @ (T*B, P)
    } else {
      g[N_W_HH] = weight_grad(dhp[0], h0c);  // (GH, B) @ (B, P)
      if (T > 1) g[N_W_HH].add_(weight_grad(rows(dhp.narrow(0, 1, T - 1)), rows(h_all.narrow(0, 0, T - 1))));
    }
  }
  // a (n) double accumulator as a new tensor of the gradients' dtype (copy=true: for float64
  // `to` would otherwise return the view of the vector, freed on return)
  auto acc = [&](std::vector<double>& v) {
    return at::from_blob(v.data(), {int64_t(v.size())}, at::TensorOptions().dtype(at::kDouble))
        .to(opts.dtype(), /*non_blocking=*/false, /*copy=*/true);
  };
  // ---- input side ----
  Tensor db_ih;  // Σ da: b_ih and ln_ih_b, and b_hh / ln_hh_b too where dhw is da (LSTM, RNN)
  const bool need_db_hh = need[N_B_HH] || need[N_LN_HH_B];
  if (need[N_B_IH] || need[N_LN_IH_B] || (dhw.is_same(da) && need_db_hh)) db_ih = ln_ih ? acc(db_x) : da.sum({0, 1});
  if (need[N_B_IH]) g[N_B_IH] = db_ih;
  if (need[N_LN_IH_B]) g[N_LN_IH_B] = db_ih;
  if (ln_ih && need[N_LN_IH_W]) g[N_LN_IH_W] = acc(dw_x);
  // ---- recurrent side ----
  if (need_db_hh) {
    Tensor db = dhw.is_same(da) ? db_ih : dhw.sum({0, 1});
    if (need[N_B_HH]) g[N_B_HH] = db;
    if (need[N_LN_HH_B]) g[N_LN_HH_B] = db;
  }
  if (ln_hh && need[N_LN_HH_W]) g[N_LN_HH_W] = acc(dw_h);
  if (proj && need[N_W_HR]) g[N_W_HR] = weight_grad(rows(dht_all), rows(q));  // (P, T*B) @ (T*B, H)
  if (ln_c && need[N_LN_C_W]) g[N_LN_C_W] = acc(dw_c);
  if (ln_c && need[N_LN_C_B]) g[N_LN_C_B] = acc(db_c);
  const Tensor dxp_rows = rows(dxp);  // (T*B, GH)
  if (need[N_W_IH]) g[N_W_IH] = weight_grad(dxp_rows, x.reshape({T * B, I}));   // (GH, T*B) @ (T*B, I)
  if (need[N_X]) g[N_X] = mm_rows(dxp_rows, w_ih).view({T, B, I});  // (T*B, GH) @ (GH, I)
  return g;
}

// ---------------------------------------------------------------------------------------
// minGRU / minLSTM (nn/minrnn.py): gates that see only x_t, so every step is
//
//   h_t = a_t ⊙ h_{t-1} + (1 − a_t) ⊙ h̃_t,   h̃_t = g(p_t),  g(p) = p + 0.5 (p ≥ 0), σ(p) (p < 0)
//
//   minGRU   pre = k | p            a = 1 − z = σ(−k)
//   minLSTM  pre = k_f | k_i | p    a = f' = f / (f + i),  f = σ(k_f), i = σ(k_i)
//
// forward   pre = X W^T + b                        one product over all T*B rows (project_rows)
//           h_t from a_t, h̃_t and h_{t-1}          one pass over (T, B, H)
// backward  s_t = ∂L/∂h_t + a_{t+1} s_{t+1}        the adjoint, the same recurrence reversed,
//           ∂L/∂a_t = s_t (h_{t-1} − h̃_t),  ∂L/∂p_t = s_t (1 − a_t) g'(p_t)   in the same pass
//           dW, db, dx                             one product or reduction each
//
// Both passes are sequential in t, as the Python fallback's chunked scan is not: one pass of
// a few flops per element over memory that streams through the cache costs less than any
// scan's extra passes. The batch rows are independent, so each pass is split over them
// between torch's threads (at::parallel_for); the products use oneDNN/BLAS threads.
// Only pre and h are saved; a and h̃ are recomputed in the backward (one exp each).

enum MinCell : int64_t { MIN_GRU = 0, MIN_LSTM = 1 };

// g(p) = max(σ(p) − 0.5, p) + 0.5 without a branch (σ(p) ≤ p + 0.5 exactly when p ≥ 0)
template <typename T>
SEQLAB_INLINE T g_(T p) {
  const T s = sigmoid_(p) - T(0.5);
  return (s > p ? s : p) + T(0.5);
}

// f' = f / (f + i) = 1 / (1 + r), r = (1 + e^{−k_f}) / (1 + e^{−k_i}), written with
// 1 + e^{−k} = e^{max(−k, 0)} (1 + e^{−|k|}) so that nothing overflows: r = e^{c_f − c_i} q with
// q in [1/2, 2]. Where f + i itself would underflow (k_f, k_i < −87) this still gives the
// ratio, as the Python path's logsigmoid difference does.
template <typename T>
SEQLAB_INLINE T minlstm_a(T kf, T ki) {
  const T cf = kf < T(0) ? -kf : T(0), ci = ki < T(0) ? -ki : T(0);
  const T q = (T(1) + exp_(-(kf < T(0) ? -kf : kf))) / (T(1) + exp_(-(ki < T(0) ? -ki : ki)));
  return T(1) / (T(1) + exp_(cf - ci) * q);
}

// a as a function of the row's gate pre-activations r (k | p, or k_f | k_i | p)
template <int64_t CELL, typename T>
SEQLAB_INLINE T min_a(const T* r, int64_t j, int64_t H) {
  if constexpr (CELL == MIN_GRU) return sigmoid_(-r[j]);
  else return minlstm_a(r[j], r[H + j]);
}

// Threads take contiguous ranges of batch rows and walk time in order; within a range, step t
// touches rows b0..b1 of pre and h, which lie next to each other in memory (walking one row
// through time instead jumps B*G*H values per step, a new page each time, and ran 4x slower).
template <int64_t CELL, typename T>
void min_forward_rows(const T* pre, const T* h0, T* h, int64_t Tn, int64_t B, int64_t H) {
  constexpr int64_t G = CELL == MIN_GRU ? 2 : 3;
  const int64_t GH = G * H;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t t = 0; t < Tn; ++t) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* r = pre + (t * B + b) * GH;  // this row's k | p or k_f | k_i | p
        const T* p = r + (G - 1) * H;
        const T* hp = t > 0 ? h + ((t - 1) * B + b) * H : h0 + b * H;  // h_{t-1}
        T* ho = h + (t * B + b) * H;
        for (int64_t j = 0; j < H; ++j) {
          const T a = min_a<CELL>(r, j, H), ht = g_(p[j]);
          ho[j] = ht + a * (hp[j] - ht);  // a h_{t-1} + (1 − a) h̃
        }
      }
    }
  });
}

// x (T, B, I), w (GH, I), b (GH) or none, h0 (B, H) -> [h (T, B, H), pre (T, B, GH)]
std::vector<Tensor> min_forward(int64_t cell, const Tensor& x, const Tensor& w, const OptT& b, const Tensor& h0_) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(cell == MIN_GRU || cell == MIN_LSTM, "seqlab min_forward: cell must be 0 (minGRU) or 1 (minLSTM), got ",
              cell);
  const int64_t Tn = x.size(0), B = x.size(1), I = x.size(2), GH = w.size(0), H = h0_.size(1);
  const Tensor pre = project_rows(x.reshape({Tn * B, I}), w, given(b) ? *b : Tensor(), {Tn, B, GH});
  const Tensor h0 = h0_.contiguous();
  // h is the layer's output, and also from the pool (unlike the RNN loop's y): at T*B rows it is the
  // largest buffer a training step touches first, and a training step frees it again. Its storage
  // is resizable like any other output's (see loop_buffer).
  Tensor h = loop_buffer({Tn, B, H}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "seqlab_min_forward", [&] {
    auto run = cell == MIN_GRU ? min_forward_rows<MIN_GRU, scalar_t> : min_forward_rows<MIN_LSTM, scalar_t>;
    run(pre.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), Tn, B, H);
  });
  return {h, pre};
}

// One row of one step backwards: ∂L/∂pre_t (gr, its p block gp) from ∂L/∂h_t (d), and the adjoint
// s and gate a carried from step t+1 (sn, an), updated in place. __restrict: with eight pointers
// GCC gives up versioning the loop for possible aliasing, and minLSTM's backward stayed scalar.
template <int64_t CELL, typename T>
void min_backward_row(const T* __restrict r, const T* __restrict p, const T* __restrict hp, const T* __restrict d,
                      T* __restrict gr, T* __restrict gp, T* __restrict sn, T* __restrict an, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T s = d[j] + an[j] * sn[j];
    const T sp = sigmoid_(p[j]), gm = sp - T(0.5);
    const T ht = (gm > p[j] ? gm : p[j]) + T(0.5);       // g(p)
    const T dg = p[j] < T(0) ? sp * (T(1) - sp) : T(1);  // g'(p)
    const T a = min_a<CELL>(r, j, H);
    const T du = s * (hp[j] - ht) * a * (T(1) - a);  // ∂L/∂u with a = σ(u)
    gp[j] = s * (T(1) - a) * dg;
    if constexpr (CELL == MIN_GRU) {
      gr[j] = -du;  // u = −k
    } else {
      // u = log σ(k_f) − log σ(k_i): ∂u/∂k_f = σ(−k_f), ∂u/∂k_i = −σ(−k_i)
      gr[j] = du * sigmoid_(-r[j]);
      gr[H + j] = -du * sigmoid_(-r[H + j]);
    }
    sn[j] = s;
    an[j] = a;
  }
}

// dh is read through its strides: the gradient of out.sum() arrives as an expanded scalar,
// which .contiguous() would spend a full (T, B, H) pass to materialise.
template <int64_t CELL, typename T>
void min_backward_rows(const T* pre, const T* h, const T* h0, const T* dh, const int64_t* dh_st, const T* dh_n,
                       T* gpre, T* dh0, int64_t Tn, int64_t B, int64_t H) {
  constexpr int64_t G = CELL == MIN_GRU ? 2 : 3;
  const int64_t GH = G * H;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    const int64_t nb = b1 - b0;
    std::vector<T> s_next(nb * H), a_next(nb * H), drow(dh_st[2] == 1 ? 0 : H);  // s_{t+1}, a_{t+1} per row
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < H; ++j) {
        s_next[(b - b0) * H + j] = dh_n ? dh_n[b * H + j] : T(0);  // ∂L/∂h_n enters as s_T with a_T = 1
        a_next[(b - b0) * H + j] = T(1);
      }
    for (int64_t t = Tn - 1; t >= 0; --t) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* r = pre + (t * B + b) * GH;
        const T* p = r + (G - 1) * H;
        const T* hp = t > 0 ? h + ((t - 1) * B + b) * H : h0 + b * H;  // h_{t-1}
        const T* d = dh + t * dh_st[0] + b * dh_st[1];  // ∂L/∂h_t
        if (dh_st[2] != 1) {
          for (int64_t j = 0; j < H; ++j) drow[j] = d[j * dh_st[2]];
          d = drow.data();
        }
        T* gr = gpre + (t * B + b) * GH;  // ∂L/∂pre_t
        min_backward_row<CELL, T>(r, p, hp, d, gr, gr + (G - 1) * H, s_next.data() + (b - b0) * H,
                                  a_next.data() + (b - b0) * H, H);
      }
    }
    if (dh0)
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t j = 0; j < H; ++j)
          dh0[b * H + j] = a_next[(b - b0) * H + j] * s_next[(b - b0) * H + j];  // ∂L/∂h_0 = a_0 s_0
  });
}

// The saved pre (T, B, GH) and h (T, B, H), the inputs x, w, h0, and ∂L/∂h (T, B, H), ∂L/∂h_n
// (B, H) or none -> [dx, dW, db, dh0], each undefined unless need[k] (the order of the list)
std::vector<Tensor> min_backward(int64_t cell, const Tensor& x, const Tensor& w, const Tensor& pre,
                                 const Tensor& h, const Tensor& h0_, const Tensor& dh_, const OptT& dh_n_,
                                 c10::ArrayRef<int64_t> need) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(need.size() == 4, "seqlab min_backward: expected 4 flags (x, W, b, h0), got ", need.size());
  TORCH_CHECK(cell == MIN_GRU || cell == MIN_LSTM, "seqlab min_backward: cell must be 0 (minGRU) or 1 (minLSTM), got ", cell);
  const int64_t Tn = x.size(0), B = x.size(1), I = x.size(2), GH = w.size(0), H = h.size(2);
  const Tensor h0 = h0_.contiguous();
  const Tensor dh_n = given(dh_n_) ? dh_n_->contiguous() : Tensor();
  const int64_t dh_st[3] = {dh_.stride(0), dh_.stride(1), dh_.stride(2)};
  Tensor gpre = loop_buffer({Tn, B, GH}, x.options());
  Tensor dh0 = need[3] ? at::empty({B, H}, x.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "seqlab_min_backward", [&] {
    auto run = cell == MIN_GRU ? min_backward_rows<MIN_GRU, scalar_t> : min_backward_rows<MIN_LSTM, scalar_t>;
    run(pre.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), dh_.data_ptr<scalar_t>(), dh_st,
        dh_n.defined() ? dh_n.data_ptr<scalar_t>() : nullptr, gpre.data_ptr<scalar_t>(),
        dh0.defined() ? dh0.data_ptr<scalar_t>() : nullptr, Tn, B, H);
  });
  const Tensor g_rows = gpre.view({Tn * B, GH});  // (T, B, GH) -> (T*B, GH)
  std::vector<Tensor> g(4);
  if (need[0]) g[0] = mm_rows(g_rows, w).view({Tn, B, I});               // (T*B, GH) @ (GH, I)
  if (need[1]) g[1] = weight_grad(g_rows, x.reshape({Tn * B, I}));     // (GH, T*B) @ (T*B, I)
  if (need[2]) g[2] = g_rows.sum(0);
  g[3] = dh0;
  return g;
}

// What compiled.py stamps this build with (a hash of the sources, flags, torch and Python), so
// that a library left on disk by another build can be told apart after loading it
#ifndef SEQLAB_BUILD_STAMP
#define SEQLAB_BUILD_STAMP unstamped
#endif
#define SEQLAB_STR2(x) #x
#define SEQLAB_STR(x) SEQLAB_STR2(x)
std::string build_stamp() { return SEQLAB_STR(SEQLAB_BUILD_STAMP); }

}  // namespace

TORCH_LIBRARY(seqlab_compiled, m) {
  m.def("rnn_forward(int cell, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? w_hr, Tensor? ln_ih_w, Tensor? ln_ih_b, Tensor? ln_hh_w, Tensor? ln_hh_b, "
        "Tensor? ln_c_w, Tensor? ln_c_b, Tensor? keep, Tensor? keep_c, Tensor? out, Tensor? rec, bool save) "
        "-> Tensor[]");
  m.def("rnn_backward(int cell, Tensor?[] saved, Tensor x, Tensor h0, Tensor? c0, Tensor?[] weights, "
        "Tensor?[] masks, Tensor dy, Tensor? dh_T, Tensor? dc_T, int[] need) -> Tensor[]");
  m.def("min_forward(int cell, Tensor x, Tensor w, Tensor? b, Tensor h0) -> Tensor[]");
  m.def("min_backward(int cell, Tensor x, Tensor w, Tensor pre, Tensor h, Tensor h0, Tensor dh, Tensor? dh_n, "
        "int[] need) -> Tensor[]");
  m.def("set_gemm_threshold(int n) -> int", &set_gemm_threshold);
  m.def("has_onednn() -> bool", &has_onednn);
  m.def("set_direct_blas(bool on) -> bool", &set_direct_blas);
  m.def("has_direct_blas() -> bool", &has_direct_blas);
  m.def("set_brgemm(int mode) -> int", &set_brgemm);
  m.def("build_stamp() -> str", &build_stamp);
  m.def("brgemm_auto() -> bool", &brgemm_auto);
}

TORCH_LIBRARY_IMPL(seqlab_compiled, CPU, m) {
  m.impl("rnn_forward", &rnn_forward);
  m.impl("rnn_backward", &rnn_backward);
  m.impl("min_forward", &min_forward);
  m.impl("min_backward", &min_backward);
}

}  // namespace seqlab
