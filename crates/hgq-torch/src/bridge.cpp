// A torch::autograd::Function whose forward and backward run hgq-core's fused CPU kernels
// (Rust, through hgq_torch_fixed_cpu in src/bridge.rs). Exceptions never cross into Rust:
// hgq_torch_fixed_apply catches them and returns the message.
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <tuple>
#include <utility>

extern "C" {
struct HgqView {
  const float* data;
  const int64_t* shape;
  int64_t ndim;
};

// Defined in Rust. Forward (dy null): writes y, and into *screen_out what it found of the bit
// widths (hgq_core::Screen: 0 unknown, 1 in range). Backward (dy given): writes dx, dp1, dp2
// only, taking `screen` (what the forward found) as known; dy_same: dy points at one value
// that holds for every element. `bits` says what p1, p2 are (0: i, f; 1: KBI's raw b, i).
// Returns 0 on success, else writes a NUL-terminated message into err.
int hgq_torch_fixed_cpu(const uint8_t* cfg, size_t cfg_len, int training, int bits, int screen,
                        int* screen_out, const HgqView* x, const HgqView* k, const HgqView* p1,
                        const HgqView* p2, const float* dy, int dy_same, float* y, float* dx,
                        float* dp1, float* dp2, char* err, size_t err_len);

// Defined in Rust (src/cuda/route.rs): runs the CUDA kernel `call` describes (the bytes of a
// `cuda::route::Call`) on `stream` of CUDA device `device`, or its host build where `device`
// is -1 (CPU tensors). which 0: the forward, writes y; 1: the backward for upstream dy, writes
// dx and the two bit widths' gradients per element of x (ga, gb). The pointers are element
// arrays of the call's type, n elements for x, y, dy, dx, ga, gb. status: the call's status
// word (an int on x's device) or null. Returns 0 on success, else writes a NUL-terminated
// message into err.
int hgq_torch_kernel_launch(const uint8_t* call, size_t call_len, int which, const void* x,
                            const void* k, const void* p1, const void* p2, const void* dy,
                            void* y, void* dx, void* ga, void* gb, void* status, int64_t n,
                            int device, void* stream, char* err, size_t err_len);
}

#ifdef HGQ_TORCH_CUDA
#include <dlfcn.h>

#include <atomic>
#include <memory>

// A reference to libtorch_cuda (never called) so the linker keeps it: see build.rs.
namespace at {
namespace cuda {
size_t getChosenWorkspaceSize();
}
}  // namespace at
// Read (volatile) on every call of hgq_torch_fixed_apply, so the reference lives in a section
// the linker keeps even with --gc-sections (rust-lld only counts live references for
// --as-needed).
static void* volatile hgq_torch_cuda_anchor =
    reinterpret_cast<void*>(&at::cuda::getChosenWorkspaceSize);
#define HGQ_TORCH_TOUCH_CUDA() ((void)hgq_torch_cuda_anchor)
// The current stream, for the kernel route's launches. c10/cuda/CUDAStream.h needs the CUDA
// toolkit's headers, which the wheels do not ship whole, so its class is declared here with the
// same layout (one c10::Stream) and the two functions called are libc10_cuda's exports.
namespace c10 {
namespace cuda {
class CUDAStream {
 public:
  void* stream() const;  // cudaStream_t

 private:
  c10::Stream stream_;
};
CUDAStream getCurrentCUDAStream(c10::DeviceIndex device_index);
}  // namespace cuda
}  // namespace c10
#else
#define HGQ_TORCH_TOUCH_CUDA() ((void)0)
#endif

namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

HgqView view(const at::Tensor& t) {
  return HgqView{t.data_ptr<float>(), t.sizes().data(), t.dim()};
}

// Runs the kernel; returns the screen it found (see hgq_torch_fixed_cpu).
int64_t call(const std::string& cfg, bool training, int64_t bits, int64_t screen,
             const at::Tensor& x, const at::Tensor& k, const at::Tensor& p1, const at::Tensor& p2,
             const float* dy, bool dy_same, float* y, float* dx, float* dp1, float* dp2) {
  char err[1024];
  err[0] = 0;
  int found = 0;
  HgqView vx = view(x), vk = view(k), v1 = view(p1), v2 = view(p2);
  int rc = hgq_torch_fixed_cpu(reinterpret_cast<const uint8_t*>(cfg.data()), cfg.size(),
                               training ? 1 : 0, static_cast<int>(bits), static_cast<int>(screen),
                               &found, &vx, &vk, &v1, &v2, dy, dy_same ? 1 : 0, y, dx, dp1, dp2,
                               err, sizeof err);
  if (rc != 0) {
    err[sizeof err - 1] = 0;
    throw std::runtime_error(err);
  }
  return found;
}

struct FixedFn : public torch::autograd::Function<FixedFn> {
  // p1, p2: i, f (bits 0) or KBI's raw b, i (bits 1).
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, at::Tensor k, at::Tensor p1,
                            at::Tensor p2, std::string cfg, bool training, int64_t bits) {
    at::Tensor y = at::empty_like(x);
    int64_t screen = call(cfg, training, bits, 0, x, k, p1, p2, nullptr, false,
                          y.data_ptr<float>(), nullptr, nullptr, nullptr);
    ctx->save_for_backward({x, k, p1, p2});
    ctx->saved_data["cfg"] = cfg;
    ctx->saved_data["training"] = training;
    ctx->saved_data["bits"] = bits;
    // What the forward found of k, p1, p2 holds in the backward: autograd refuses to run it
    // (get_saved_variables throws) if any of them was modified in place since.
    ctx->saved_data["screen"] = screen;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &k = saved[1], &p1 = saved[2], &p2 = saved[3];
    std::string cfg = ctx->saved_data["cfg"].toStringRef();
    bool training = ctx->saved_data["training"].toBool();
    int64_t bits = ctx->saved_data["bits"].toInt();
    int64_t screen = ctx->saved_data["screen"].toInt();
    at::Tensor dy = grads[0].to(at::kFloat).expand(x.sizes());
    // One value broadcast everywhere (the gradient of a sum, a mean): passed as that value,
    // not materialized as a tensor the size of x.
    bool same = dy.numel() > 0;
    for (int64_t s : dy.strides()) same = same && s == 0;
    if (!same) dy = dy.contiguous();
    at::Tensor dx = at::empty_like(x);
    // The kernel writes every element of dp1 and dp2 (sums start from zero inside it), so no
    // zero fill: per element that would be two more passes over memory. It does not store y.
    at::Tensor dp1 = at::empty_like(p1);
    at::Tensor dp2 = at::empty_like(p2);
    call(cfg, training, bits, screen, x, k, p1, p2, dy.data_ptr<float>(), same, nullptr,
         dx.data_ptr<float>(), dp1.data_ptr<float>(), dp2.data_ptr<float>());
    return {dx, at::Tensor(), dp1, dp2, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The stream torch runs x's device's work on (null on the CPU).
void* stream_of(const at::Tensor& x) {
#ifdef HGQ_TORCH_CUDA
  if (x.is_cuda()) {
    return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  }
#endif
  return nullptr;
}

void launch(const std::string& call, int which, const at::Tensor& x, const at::Tensor& k,
            const at::Tensor& p1, const at::Tensor& p2, const void* dy, void* y, void* dx,
            void* ga, void* gb, const at::Tensor& status) {
  if (call.empty()) return;
  char err[1024];
  err[0] = 0;
  int device = x.is_cuda() ? static_cast<int>(x.device().index()) : -1;
  void* st = status.numel() > 0 ? status.data_ptr() : nullptr;
  int rc = hgq_torch_kernel_launch(reinterpret_cast<const uint8_t*>(call.data()), call.size(),
                                   which, x.data_ptr(), k.data_ptr(), p1.data_ptr(),
                                   p2.data_ptr(), dy, y, dx, ga, gb, st, x.numel(), device,
                                   stream_of(x), err, sizeof err);
  if (rc != 0) {
    err[sizeof err - 1] = 0;
    throw std::runtime_error(err);
  }
}

// The fixed-point quantizer as our CUDA kernel (src/cuda/fixed.cu): contiguous x, k, p1, p2
// of one type on one device. The backward's kernel writes the bit widths' gradients per element
// of x; they are summed here to p1's and p2's shapes. chain_after: KBI's chain rule on the
// sums (db = sum df, di = sum di + -db), for bit widths smaller than x (the kernel applies it
// per element otherwise). cols > 0: bit widths one per column, whose gradients the backward's
// kernel sums in the pass into chunks x cols partial sums (summed over the chunks here).
// status (one int on a device, else empty): the call's status word, which the kernel's checks fill; with
// wide (the same call computing in double on these float buffers, gated on the status word),
// each launch runs both programs and only the one the status names does the work.
struct KernelFn : public torch::autograd::Function<KernelFn> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, at::Tensor k, at::Tensor p1,
                            at::Tensor p2, at::Tensor status, std::string call,
                            std::string wide, bool chain_after, int64_t chunks, int64_t cols) {
    at::Tensor y = at::empty_like(x);
    if (x.numel() > 0) {
      launch(call, 0, x, k, p1, p2, nullptr, y.data_ptr(), nullptr, nullptr, nullptr, status);
      launch(wide, 0, x, k, p1, p2, nullptr, y.data_ptr(), nullptr, nullptr, nullptr, status);
    }
    ctx->save_for_backward({x, k, p1, p2});
    ctx->saved_data["status"] = status;
    ctx->saved_data["wide"] = wide;
    ctx->saved_data["call"] = call;
    ctx->saved_data["chain_after"] = chain_after;
    ctx->saved_data["chunks"] = chunks;
    ctx->saved_data["cols"] = cols;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &k = saved[1], &p1 = saved[2], &p2 = saved[3];
    std::string call = ctx->saved_data["call"].toStringRef();
    std::string wide = ctx->saved_data["wide"].toStringRef();
    at::Tensor status = ctx->saved_data["status"].toTensor();
    bool chain_after = ctx->saved_data["chain_after"].toBool();
    int64_t chunks = ctx->saved_data["chunks"].toInt();
    int64_t cols = ctx->saved_data["cols"].toInt();
    at::Tensor dy = grads[0].to(x.scalar_type()).expand(x.sizes()).contiguous();
    at::Tensor dx = at::empty_like(x);
    // The two operands' gradients from their sums: KBI's chain rule where it runs after them.
    auto chained = [&](const at::Tensor& sa, const at::Tensor& sb) {
      if (chain_after) {
        // The kernel's first output is the formed i's, its second the formed f's.
        at::Tensor d1 = sb.view(p1.sizes());
        return std::make_pair(d1, sa.view(p2.sizes()) + d1.neg());
      }
      return std::make_pair(sa.view(p1.sizes()), sb.view(p2.sizes()));
    };
    at::Tensor dp1, dp2;
    if (cols > 0 && x.numel() > 0) {
      at::Tensor pa = at::empty({chunks, cols}, x.options());
      at::Tensor pb = at::empty({chunks, cols}, x.options());
      launch(call, 2, x, k, p1, p2, dy.data_ptr(), nullptr, dx.data_ptr(), pa.data_ptr(),
             pb.data_ptr(), status);
      std::tie(dp1, dp2) = chained(pa.sum(0), pb.sum(0));
      if (!wide.empty()) {
        // The wide program's partial sums are doubles, summed (and chained) in double and
        // rounded once, as a float64 call's are; the status word picks one on the device.
        at::Tensor qa = at::empty({chunks, cols}, x.options().dtype(at::kDouble));
        at::Tensor qb = at::empty({chunks, cols}, x.options().dtype(at::kDouble));
        launch(wide, 2, x, k, p1, p2, dy.data_ptr(), nullptr, dx.data_ptr(), qa.data_ptr(),
               qb.data_ptr(), status);
        at::Tensor is_wide = status.bitwise_and(1).ne(0);
        auto w = chained(qa.sum(0), qb.sum(0));
        dp1 = at::where(is_wide, w.first.to(x.scalar_type()), dp1);
        dp2 = at::where(is_wide, w.second.to(x.scalar_type()), dp2);
      }
    } else {
      at::Tensor ga = at::empty_like(x);
      at::Tensor gb = at::empty_like(x);
      if (x.numel() > 0) {
        // Both programs write the same buffers (gradients per element: no sums to round).
        launch(call, 1, x, k, p1, p2, dy.data_ptr(), nullptr, dx.data_ptr(), ga.data_ptr(),
               gb.data_ptr(), status);
        launch(wide, 1, x, k, p1, p2, dy.data_ptr(), nullptr, dx.data_ptr(), ga.data_ptr(),
               gb.data_ptr(), status);
      } else {
        ga.zero_();
        gb.zero_();
      }
      std::tie(dp1, dp2) = chained(ga.sum_to_size(p1.sizes()), gb.sum_to_size(p2.sizes()));
    }
    return {dx,          at::Tensor(), dp1,          dp2,          at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

void write_err(const char* what, char* err, size_t err_len) {
  if (err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = 0;
}
}  // namespace

#ifdef HGQ_TORCH_CUDA
namespace {
// Counts the warnings of libtorch's CUDA sync debug mode ("called a synchronizing CUDA
// operation") raised on the thread that installed it (a backward's, which the autograd engine
// replays on the calling thread, included); other warnings go on to the handler it replaced.
class SyncCounter : public c10::WarningHandler {
 public:
  explicit SyncCounter(c10::WarningHandler* prev) : prev(prev) {}
  void process(const c10::Warning& w) override {
    if (w.msg().find("synchronizing CUDA operation") != std::string::npos) {
      count.fetch_add(1);
    } else if (prev != nullptr) {
      prev->process(w);
    }
  }
  c10::WarningHandler* prev;
  std::atomic<int64_t> count{0};
};
thread_local std::unique_ptr<SyncCounter> sync_counter;

// libtorch's sync debug state: c10/cuda/CUDAFunctions.h's `WarningState`, one
// `SyncDebugMode` (an int enum: 0 off, 1 warn, 2 error). That header needs the CUDA toolkit's,
// so the layout is restated here. `c10::cuda::warning_state()` is an inline function whose
// static object libc10_cuda exports as a unique symbol; a copy compiled here would be this
// binary's own (Rust binaries export no symbols), so the shared one is looked up by name.
enum class SyncDebugMode : int { Disabled = 0, Warn = 1 };
struct SyncState {
  SyncDebugMode mode;
};
SyncState* sync_state() {
  return static_cast<SyncState*>(
      dlsym(RTLD_DEFAULT, "_ZZN3c104cuda13warning_stateEvE14warning_state_"));
}
}  // namespace
#endif

// Starts (on != 0) or stops counting the host synchronizations libtorch reports on CUDA (its
// sync debug mode, as torch.cuda.set_sync_debug_mode("warn")) on this thread. Returns 0, or 1
// where this build or libtorch has no CUDA.
extern "C" int hgq_torch_sync_watch(int on) {
#ifdef HGQ_TORCH_CUDA
  auto* state = sync_state();
  if (state == nullptr) return 1;
  if (on != 0) {
    if (!sync_counter) {
      sync_counter = std::make_unique<SyncCounter>(c10::WarningUtils::get_warning_handler());
      c10::WarningUtils::set_warning_handler(sync_counter.get());
    }
    sync_counter->count.store(0);
    state->mode = SyncDebugMode::Warn;
  } else {
    state->mode = SyncDebugMode::Disabled;
    if (sync_counter) {
      c10::WarningUtils::set_warning_handler(sync_counter->prev);
      sync_counter.reset();
    }
  }
  return 0;
#else
  (void)on;
  return 1;
#endif
}

// The synchronizations counted on this thread since the watch started (-1 without a watch).
extern "C" int64_t hgq_torch_sync_count() {
#ifdef HGQ_TORCH_CUDA
  return sync_counter ? sync_counter->count.load() : -1;
#else
  return -1;
#endif
}

// 1 when this build refers to libtorch_cuda (and so links it), else 0.
extern "C" int hgq_torch_cuda_linked() {
  HGQ_TORCH_TOUCH_CUDA();
#ifdef HGQ_TORCH_CUDA
  return 1;
#else
  return 0;
#endif
}

// Drops a tensor's gradient (PyTorch's zero_grad(set_to_none=True)): the next backward then
// hands its gradient buffer over instead of adding it into a zeroed one.
extern "C" void hgq_torch_clear_grad(const at::Tensor* t) {
  if (t->defined()) {
    const_cast<at::Tensor*>(t)->mutable_grad().reset();
  }
}

// Moves a tensor's version counter, as every in-place operation through libtorch does: a graph
// that saved the tensor before a write through its raw memory then refuses its backward
// ("modified by an inplace operation") instead of reading the new values.
extern "C" void hgq_torch_bump_version(const at::Tensor* t) {
  if (t->defined()) {
    t->unsafeGetTensorImpl()->bump_version();
  }
}

// Whether a tensor is a defined, contiguous float32 CPU tensor (its memory a plain float
// array) and, if so, that memory and its element count: the checks the host paths make before
// reading a tensor in place, in one call instead of one per property (and no shape vector).
extern "C" int hgq_torch_plain_f32(const at::Tensor* t, float** data, int64_t* numel) {
  try {
    if (!t->defined() || t->device().type() != c10::DeviceType::CPU ||
        t->scalar_type() != at::kFloat || t->is_sparse() || !t->is_contiguous()) {
      return 0;
    }
    *numel = t->numel();
    *data = *numel == 0 ? nullptr : static_cast<float*>(t->data_ptr());
    return 1;
  } catch (...) {
    return 0;
  }
}

extern "C" int hgq_torch_fixed_apply(const at::Tensor* x, const at::Tensor* k,
                                     const at::Tensor* p1, const at::Tensor* p2,
                                     const uint8_t* cfg, size_t cfg_len, int training, int bits,
                                     at::Tensor** out, char* err, size_t err_len) {
  HGQ_TORCH_TOUCH_CUDA();
  try {
    at::Tensor y = FixedFn::apply(*x, *k, *p1, *p2,
                                  std::string(reinterpret_cast<const char*>(cfg), cfg_len),
                                  training != 0, static_cast<int64_t>(bits));
    *out = new at::Tensor(std::move(y));
    return 0;
  } catch (const std::exception& e) {
    write_err(e.what(), err, err_len);
  } catch (...) {
    write_err("unknown C++ exception", err, err_len);
  }
  return 1;
}

extern "C" int hgq_torch_kernel_apply(const at::Tensor* x, const at::Tensor* k,
                                      const at::Tensor* p1, const at::Tensor* p2,
                                      const at::Tensor* status, const uint8_t* call,
                                      size_t call_len, const uint8_t* wide, size_t wide_len,
                                      int chain_after, int64_t chunks, int64_t cols,
                                      at::Tensor** out, char* err, size_t err_len) {
  HGQ_TORCH_TOUCH_CUDA();
  try {
    // No status: an empty tensor (an autograd function's inputs must be defined).
    at::Tensor st =
        status != nullptr ? *status : at::empty({0}, x->options().dtype(at::kInt));
    at::Tensor y = KernelFn::apply(
        *x, *k, *p1, *p2, st, std::string(reinterpret_cast<const char*>(call), call_len),
        std::string(reinterpret_cast<const char*>(wide), wide_len), chain_after != 0, chunks,
        cols);
    *out = new at::Tensor(std::move(y));
    return 0;
  } catch (const std::exception& e) {
    write_err(e.what(), err, err_len);
  } catch (...) {
    write_err("unknown C++ exception", err, err_len);
  }
  return 1;
}
