// The NCCL part of the shim: NCCL process groups. build.rs compiles it with -DLDIST_WITH_NCCL
// -DUSE_C10D_NCCL -DUSE_CUDA when lightning-sys found CUDA's headers (runtime, crt, cccl) and
// nccl.h is found too; otherwise without them, and then every function here only reports that
// NCCL support was not compiled in.
#include "common.h"

#ifdef LDIST_WITH_NCCL
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

extern "C" char* ldist_pg_new_nccl(ldist_store* store, const char* prefix, size_t prefix_len,
                                   int rank, int size, int64_t timeout_ms, ldist_pg** out) {
  return ldist::guard([&] {
    auto prefixed =
        c10::make_intrusive<c10d::PrefixStore>(ldist::str(prefix, prefix_len), store->tcp);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = ldist::ms(timeout_ms);
    // Throws "ProcessGroupNCCL is only supported with GPUs, no GPUs found!" without a GPU.
    auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, size, opts);
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(prefixed, rank, size);
    pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
    *out = new ldist_pg{std::move(pg), true};
  });
}

extern "C" int ldist_nccl_compiled(void) { return 1; }

#else

extern "C" char* ldist_pg_new_nccl(ldist_store*, const char*, size_t, int, int, int64_t,
                                   ldist_pg**) {
  return ldist::dup("NCCL support was not compiled into lightning-dist");
}

extern "C" int ldist_nccl_compiled(void) { return 0; }

#endif
