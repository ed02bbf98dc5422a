// Internals shared by the shim's translation units: the handle types, and the exception guard
// (lightning-sys's lsys_common.h, found through its `links` metadata).
#pragma once
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <string>

#include "ldist.h"
#include "lsys_common.h"

struct ldist_store {
  c10::intrusive_ptr<c10d::TCPStore> tcp;
};

struct ldist_pg {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  // NCCL reduces AVG itself; Gloo has no AVG (the shim sums, then divides).
  bool native_avg = false;
};

namespace ldist {

using lsys::dup;
using lsys::guard;

inline std::string str(const char* p, size_t n) { return std::string(p, n); }

inline std::chrono::milliseconds ms(int64_t v) { return std::chrono::milliseconds(v); }

}  // namespace ldist
