// lightning-dist's shim over libtorch's c10d: TCPStore, ProcessGroup (Gloo) and its
// collectives, and DDP's Reducer. Compiled with -DUSE_C10D_GLOO against the wheel's headers and
// the gloo stub (csrc/gloo-stub): ProcessGroupGloo.hpp holds gloo types by pointer only, and
// this file only calls constructors libtorch_cpu exports.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/logger.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "common.h"

using ldist::guard;

struct ldist_reducer {
  std::shared_ptr<c10d::Reducer> reducer;
  bool find_unused_parameters = false;
  // DDP's logger: the reducer reaches it (through a weak pointer) when the set of unused
  // parameters changes between iterations (find_unused_parameters), as a GAN's does.
  std::shared_ptr<c10d::Logger> logger;
};

namespace {

std::vector<at::Tensor> collect(ldist_tensor* const* ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(ts[i] != nullptr, "tensor ", i, " is null");
    v.push_back(*ts[i]);
  }
  return v;
}

std::vector<std::string> keys_of(const char* const* keys, const size_t* lens, size_t n) {
  std::vector<std::string> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) v.emplace_back(keys[i], lens[i]);
  return v;
}

// Waits for every work, even after one failed (so none is left running on our tensors), then
// rethrows the first failure.
void wait_all(std::vector<c10::intrusive_ptr<c10d::Work>>& works) {
  std::exception_ptr first;
  for (auto& w : works) {
    try {
      w->wait();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace

extern "C" {

void ldist_free_bytes(uint8_t* p) { std::free(p); }

// ---- TCPStore --------------------------------------------------------------------------

char* ldist_store_tcp_new(const char* host, size_t host_len, uint16_t port, int64_t world_size,
                          int is_server, int wait_for_workers, int64_t timeout_ms,
                          ldist_store** out) {
  return guard([&] {
    c10d::TCPStoreOptions o;
    o.port = port;
    o.isServer = is_server != 0;
    if (world_size >= 0) o.numWorkers = static_cast<size_t>(world_size);
    o.waitWorkers = wait_for_workers != 0;
    o.timeout = ldist::ms(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(ldist::str(host, host_len), o);
    *out = new ldist_store{std::move(tcp)};
  });
}

void ldist_store_free(ldist_store* s) {
  try {
    delete s;
  } catch (...) {
  }
}

char* ldist_store_port(ldist_store* s, uint16_t* out) {
  return guard([&] { *out = s->tcp->getPort(); });
}

char* ldist_store_set(ldist_store* s, const char* key, size_t key_len, const uint8_t* value,
                      size_t value_len) {
  return guard([&] {
    std::vector<uint8_t> v(value, value + value_len);
    s->tcp->set(ldist::str(key, key_len), v);
  });
}

char* ldist_store_get(ldist_store* s, const char* key, size_t key_len, uint8_t** value,
                      size_t* value_len) {
  return guard([&] {
    std::vector<uint8_t> v = s->tcp->get(ldist::str(key, key_len));
    auto* p = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
    if (p == nullptr) throw std::bad_alloc();
    if (!v.empty()) std::memcpy(p, v.data(), v.size());
    *value = p;
    *value_len = v.size();
  });
}

char* ldist_store_add(ldist_store* s, const char* key, size_t key_len, int64_t delta,
                      int64_t* out) {
  return guard([&] { *out = s->tcp->add(ldist::str(key, key_len), delta); });
}

char* ldist_store_check(ldist_store* s, const char* const* keys, const size_t* key_lens,
                        size_t n, int* out) {
  return guard([&] { *out = s->tcp->check(keys_of(keys, key_lens, n)) ? 1 : 0; });
}

char* ldist_store_wait(ldist_store* s, const char* const* keys, const size_t* key_lens,
                       size_t n, int64_t timeout_ms) {
  return guard([&] {
    auto k = keys_of(keys, key_lens, n);
    if (timeout_ms < 0) {
      s->tcp->wait(k);
    } else {
      s->tcp->wait(k, ldist::ms(timeout_ms));
    }
  });
}

char* ldist_store_delete_key(ldist_store* s, const char* key, size_t key_len, int* out) {
  return guard([&] { *out = s->tcp->deleteKey(ldist::str(key, key_len)) ? 1 : 0; });
}

char* ldist_store_num_keys(ldist_store* s, int64_t* out) {
  return guard([&] { *out = s->tcp->getNumKeys(); });
}

char* ldist_store_wait_for_workers(ldist_store* s) {
  return guard([&] { s->tcp->waitForWorkers(); });
}

char* ldist_store_set_timeout(ldist_store* s, int64_t timeout_ms) {
  return guard([&] { s->tcp->setTimeout(ldist::ms(timeout_ms)); });
}

// ---- ProcessGroup ----------------------------------------------------------------------

char* ldist_pg_new_gloo(ldist_store* store, const char* prefix, size_t prefix_len, int rank,
                        int size, int64_t timeout_ms, ldist_pg** out) {
  return guard([&] {
    auto prefixed =
        c10::make_intrusive<c10d::PrefixStore>(ldist::str(prefix, prefix_len), store->tcp);
    auto opts = c10d::ProcessGroupGloo::Options::create_default(ldist::ms(timeout_ms));
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, opts);
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(prefixed, rank, size);
    // As torch.distributed's "gloo" backend: CPU tensors, and CUDA tensors through Gloo's
    // CUDA path (libtorch_cuda).
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, gloo);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    *out = new ldist_pg{std::move(pg), false};
  });
}

void ldist_pg_free(ldist_pg* pg) {
  if (pg == nullptr) return;
  try {
    // Shut the backends down only when nothing else (a Reducer) still uses the group.
    if (pg->pg.use_count() == 1) pg->pg->shutdown();
  } catch (...) {
  }
  try {
    delete pg;
  } catch (...) {
  }
}

int ldist_pg_rank(const ldist_pg* pg) { return pg->pg->getRank(); }

int ldist_pg_size(const ldist_pg* pg) { return pg->pg->getSize(); }

char* ldist_pg_all_reduce(ldist_pg* h, ldist_tensor* const* ts, size_t n, int op) {
  return guard([&] {
    TORCH_CHECK(op >= c10d::ReduceOp::SUM && op <= c10d::ReduceOp::MAX, "unknown reduce op ",
                op);
    at::NoGradGuard no_grad;
    auto tensors = collect(ts, n);
    const bool avg_by_division = op == c10d::ReduceOp::AVG && !h->native_avg;
    c10d::AllreduceOptions o;
    if (avg_by_division) {
      for (const auto& t : tensors) {
        TORCH_CHECK(c10::isFloatingType(t.scalar_type()) || c10::isComplexType(t.scalar_type()),
                    "ReduceOp::Avg on this backend is a sum divided by the world size and "
                    "needs floating-point tensors, got ",
                    t.scalar_type());
      }
      o.reduceOp = c10d::ReduceOp(c10d::ReduceOp::SUM);
    } else {
      o.reduceOp = c10d::ReduceOp(static_cast<c10d::ReduceOp::RedOpType>(op));
    }
    // One work per tensor: c10d treats a multi-tensor list as replicas of one tensor.
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(tensors.size());
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      works.push_back(h->pg->allreduce(one, o));
    }
    wait_all(works);
    if (avg_by_division) {
      for (auto& t : tensors) t.div_(h->pg->getSize());
    }
  });
}

char* ldist_pg_broadcast(ldist_pg* h, ldist_tensor* const* ts, size_t n, int root) {
  return guard([&] {
    at::NoGradGuard no_grad;
    auto tensors = collect(ts, n);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(tensors.size());
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      works.push_back(h->pg->broadcast(one, o));
    }
    wait_all(works);
  });
}

char* ldist_pg_all_gather(ldist_pg* h, const ldist_tensor* t, ldist_tensor** out) {
  return guard([&] {
    TORCH_CHECK(t != nullptr, "tensor is null");
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> inputs{t->contiguous()};
    const int size = h->pg->getSize();
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int i = 0; i < size; ++i) {
      outputs[0].push_back(
          at::empty_like(inputs[0], inputs[0].options(), at::MemoryFormat::Contiguous));
    }
    h->pg->allgather(outputs, inputs)->wait();
    for (int i = 0; i < size; ++i) out[i] = new at::Tensor(outputs[0][i]);
  });
}

char* ldist_pg_all_gather_into(ldist_pg* h, ldist_tensor* out, const ldist_tensor* in) {
  return guard([&] {
    TORCH_CHECK(out != nullptr && in != nullptr, "tensor is null");
    TORCH_CHECK(out->is_contiguous() && in->is_contiguous(), "tensors must be contiguous");
    TORCH_CHECK(out->numel() == in->numel() * h->pg->getSize(), "output holds ", out->numel(),
                " elements, expected world size x ", in->numel());
    at::NoGradGuard no_grad;
    at::Tensor o = *out;
    at::Tensor i = *in;
    h->pg->_allgather_base(o, i)->wait();
  });
}

char* ldist_pg_reduce_scatter_into(ldist_pg* h, ldist_tensor* out, const ldist_tensor* in,
                                   int op) {
  return guard([&] {
    TORCH_CHECK(out != nullptr && in != nullptr, "tensor is null");
    TORCH_CHECK(op >= c10d::ReduceOp::SUM && op <= c10d::ReduceOp::MAX, "unknown reduce op ",
                op);
    TORCH_CHECK(out->is_contiguous() && in->is_contiguous(), "tensors must be contiguous");
    TORCH_CHECK(in->numel() == out->numel() * h->pg->getSize(), "input holds ", in->numel(),
                " elements, expected world size x ", out->numel());
    at::NoGradGuard no_grad;
    const bool avg_by_division = op == c10d::ReduceOp::AVG && !h->native_avg;
    c10d::ReduceScatterOptions o;
    o.reduceOp = avg_by_division
                     ? c10d::ReduceOp(c10d::ReduceOp::SUM)
                     : c10d::ReduceOp(static_cast<c10d::ReduceOp::RedOpType>(op));
    at::Tensor ot = *out;
    at::Tensor it = *in;
    h->pg->_reduce_scatter_base(ot, it, o)->wait();
    if (avg_by_division) ot.div_(h->pg->getSize());
  });
}

char* ldist_pg_barrier(ldist_pg* h) {
  return guard([&] { h->pg->barrier()->wait(); });
}

char* ldist_pg_broadcast_coalesced(ldist_pg* h, ldist_tensor* const* ts, size_t n,
                                   size_t buffer_bytes, int root) {
  return guard([&] {
    // In place on parameters (leaves that require grad): only legal with grad mode off.
    at::NoGradGuard no_grad;
    auto tensors = collect(ts, n);
    c10d::broadcast_coalesced(h->pg, tensors, buffer_bytes, root);
  });
}

// ---- Reducer -----------------------------------------------------------------------------

char* ldist_reducer_new(ldist_pg* h, ldist_tensor* const* ts, size_t n,
                        int64_t bucket_bytes_cap, int64_t first_bucket_bytes_cap,
                        int find_unused_parameters, int gradient_as_bucket_view,
                        int init_sync, ldist_reducer** out) {
  return guard([&] {
    auto params = collect(ts, n);
    TORCH_CHECK(!params.empty(), "the Reducer needs at least one parameter");
    for (size_t i = 0; i < params.size(); ++i) {
      TORCH_CHECK(params[i].requires_grad(), "parameter ", i, " does not require grad");
    }
    if (init_sync) {
      // DDP's __init__: same shapes everywhere, then rank 0's values (250 MiB buckets).
      c10d::verify_params_across_processes(h->pg, params, std::nullopt);
      at::NoGradGuard no_grad;
      c10d::broadcast_coalesced(h->pg, params, 250 * 1024 * 1024, 0);
    }
    std::vector<bool> sparse(params.size(), false);
    // DDP: without unused-parameter search, one bucket until the first backward has shown the
    // order gradients arrive in; then _rebuild_buckets uses {first bucket, cap}.
    std::vector<size_t> limits;
    if (find_unused_parameters) {
      limits = {static_cast<size_t>(first_bucket_bytes_cap), static_cast<size_t>(bucket_bytes_cap)};
    } else {
      limits = {std::numeric_limits<size_t>::max()};
    }
    auto assignment = c10d::compute_bucket_assignment_by_size(params, limits, sparse);
    auto buckets = std::get<0>(assignment);
    // Gradients arrive roughly in reverse definition order (DDP reverses too).
    std::reverse(buckets.begin(), buckets.end());
    auto reducer = std::make_shared<c10d::Reducer>(
        params, std::move(buckets), h->pg, sparse, bucket_bytes_cap,
        find_unused_parameters != 0, gradient_as_bucket_view != 0,
        std::unordered_map<size_t, std::string>{}, first_bucket_bytes_cap,
        /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
        std::vector<int64_t>{});
    auto logger = std::make_shared<c10d::Logger>(reducer);
    // As DistributedDataParallel's constructor does: the logger's data must exist before the
    // reducer (or the logger's destructor) logs through it.
    logger->set_construction_data_and_log("lightning_rs", /*device_ids=*/{}, /*output_device=*/-1,
                                          /*broadcast_buffers=*/true, /*has_sync_bn=*/false,
                                          /*static_graph=*/false);
    reducer->set_logger(logger);
    *out = new ldist_reducer{std::move(reducer), find_unused_parameters != 0, std::move(logger)};
  });
}

void ldist_reducer_free(ldist_reducer* r) {
  try {
    delete r;
  } catch (...) {
  }
}

char* ldist_reducer_pre_forward(ldist_reducer* r, int require_sync, int* rebuilt) {
  return guard([&] {
    *rebuilt = 0;
    if (!at::GradMode::is_enabled()) return;
    if (require_sync) r->reducer->prepare_for_forward();
    *rebuilt = r->reducer->rebuild_buckets() ? 1 : 0;
  });
}

char* ldist_reducer_prepare_for_backward(ldist_reducer* r, ldist_tensor* const* outputs,
                                         size_t n) {
  return guard([&] {
    if (r->find_unused_parameters) {
      r->reducer->prepare_for_backward(collect(outputs, n));
    } else {
      r->reducer->prepare_for_backward({});
    }
  });
}

char* ldist_reducer_bucket_count(ldist_reducer* r, size_t* out) {
  return guard([&] { *out = r->reducer->get_grad_buckets(true).size(); });
}

int ldist_grad_mode_enabled(void) { return at::GradMode::is_enabled() ? 1 : 0; }

}  // extern "C"
