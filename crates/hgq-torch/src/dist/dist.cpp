// c10d's process groups for hgq-torch's `distributed` module: a TCPStore rendezvous,
// ProcessGroupGloo for CPU tensors and, where the build has NCCL (HGQ_NCCL), ProcessGroupNCCL
// for CUDA tensors, as torch.distributed's "cpu:gloo,cuda:nccl"; collectives with a timeout.
// Errors come back as messages.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef HGQ_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> gloo;
  // Null where the group has no NCCL backend.
  c10::intrusive_ptr<c10d::Backend> nccl;
  std::chrono::milliseconds timeout;
};

// The backend for `t`'s device: NCCL for CUDA tensors, Gloo for CPU ones.
c10d::Backend& backend_for(Group& g, const at::Tensor& t) {
  if (!t.is_cuda()) {
    return *g.gloo;
  }
  if (!g.nccl) {
    throw std::runtime_error("a CUDA tensor, and this group has no NCCL backend");
  }
  return *g.nccl;
}

void set_err(char* err, size_t len, const char* msg) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, msg, len - 1);
    err[len - 1] = '\0';
  }
}

template <typename F>
int guarded(char* err, size_t len, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    set_err(err, len, e.what());
  } catch (...) {
    set_err(err, len, "unknown C++ exception");
  }
  return 1;
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 1:
      return c10d::ReduceOp::MAX;
    case 2:
      return c10d::ReduceOp::MIN;
    default:
      return c10d::ReduceOp::SUM;
  }
}

// Gloo's collectives are submitted under this lock, one at a time in the process: at a group's
// first collective, c10d's flight recorder (one per process) adds the group to a map it does
// not lock, and two groups of this process doing so from two threads corrupt it (SIGSEGV).
// Only the submission is serialized, not the wait. NCCL's are not: their first submission
// joins the communicator, which waits for the other ranks, which may be this process's.
std::mutex gloo_submit;

template <typename F>
c10::intrusive_ptr<c10d::Work> submit(bool on_device, F f) {
  if (on_device) {
    return f();
  }
  std::lock_guard<std::mutex> guard(gloo_submit);
  return f();
}

// Gloo's work (CPU tensors) is waited for on the host, at most the timeout. NCCL's (CUDA
// tensors) is not: wait() without a timeout only orders the caller's stream after the
// collective, so no host synchronization; NCCL's watchdog enforces the group's timeout (the
// communicators aborted, the next collective an error).
void wait(const c10::intrusive_ptr<c10d::Work>& work, bool on_device,
          std::chrono::milliseconds timeout) {
  if (on_device) {
    work->wait();
    return;
  }
  if (!work->wait(timeout)) {
    throw std::runtime_error("collective did not complete within the timeout");
  }
}

}  // namespace

// Joins the group: rank 0 serves the TCPStore at host:port, the others connect to it; every
// rank then makes a Gloo backend over the store and, with `nccl`, an NCCL one, each under
// `prefix` and its device's name, as torch.distributed does ("default_pg/0/" and then "cpu/"
// or "cuda/" for its default group).
extern "C" int hgq_dist_new(const char* host, int port, int rank, int size,
                            int64_t timeout_ms, const char* prefix, int nccl, void** out,
                            char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    o.isServer = rank == 0;
    o.numWorkers = size;
    o.timeout = timeout;
    o.waitWorkers = true;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(host, o);
    if (prefix != nullptr && prefix[0] != '\0') {
      store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    }
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice(false));
    auto cpu_store = c10::make_intrusive<c10d::PrefixStore>("cpu/", store);
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(cpu_store, rank, size, opts);
    // As torch.distributed does after making a group (rank 0 sets the sequence number in the
    // store, the others read it): a Python rank waits for it.
    gloo->setSequenceNumberForGroup();
    c10::intrusive_ptr<c10d::Backend> cuda;
    if (nccl != 0) {
#ifdef HGQ_NCCL
      // A collective past the timeout: abort the communicators and fail the work, which
      // wait() reports, rather than torch's default of ending the process from the watchdog
      // (a caller's own setting wins).
      setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2", 0);
      auto nopts = c10d::ProcessGroupNCCL::Options::create();
      nopts->timeout = timeout;
      auto cuda_store = c10::make_intrusive<c10d::PrefixStore>("cuda/", store);
      auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(cuda_store, rank, size, nopts);
      pg->setSequenceNumberForGroup();
      cuda = pg;
#else
      throw std::runtime_error("this build of hgq-torch has no NCCL");
#endif
    }
    *out = new Group{store, gloo, cuda, timeout};
  });
}

// 1 where this build has NCCL (the CUDA toolkit headers that c10d's NCCL header needs were
// there at build time).
extern "C" int hgq_dist_has_nccl() {
#ifdef HGQ_NCCL
  return 1;
#else
  return 0;
#endif
}

extern "C" void hgq_dist_free(void* g) { delete static_cast<Group*>(g); }

// In place: `t` becomes the reduction (0 sum, 1 max, 2 min) of every rank's `t`.
extern "C" int hgq_dist_all_reduce(void* g, const at::Tensor* t, int op, char* err,
                                   size_t err_len) {
  return guarded(err, err_len, [&] {
    auto* group = static_cast<Group*>(g);
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = reduce_op(op);
    o.timeout = group->timeout;
    auto& b = backend_for(*group, *t);
    wait(submit(t->is_cuda(), [&] { return b.allreduce(ts, o); }), t->is_cuda(), group->timeout);
  });
}

// In place: every rank's `t` becomes `root`'s.
extern "C" int hgq_dist_broadcast(void* g, const at::Tensor* t, int root, char* err,
                                  size_t err_len) {
  return guarded(err, err_len, [&] {
    auto* group = static_cast<Group*>(g);
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = group->timeout;
    auto& b = backend_for(*group, *t);
    wait(submit(t->is_cuda(), [&] { return b.broadcast(ts, o); }), t->is_cuda(), group->timeout);
  });
}

extern "C" int hgq_dist_barrier(void* g, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto* group = static_cast<Group*>(g);
    c10d::BarrierOptions o;
    o.timeout = group->timeout;
    wait(submit(false, [&] { return group->gloo->barrier(o); }), false, group->timeout);
  });
}
