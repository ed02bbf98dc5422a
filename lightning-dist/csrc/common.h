// Internals shared by the shim's translation units: the handle types and the exception guard.
#pragma once
#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "ldist.h"

struct ldist_store {
  c10::intrusive_ptr<c10d::TCPStore> tcp;
};

struct ldist_pg {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  // NCCL reduces AVG itself; Gloo has no AVG (the shim sums, then divides).
  bool native_avg = false;
};

namespace ldist {

// Returned when even the error message cannot be allocated; ldist_free_string skips it.
inline char oom_message[] = "out of memory while reporting an error";

// A malloc'd copy of `s`, for the caller to free with ldist_free_string.
inline char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p == nullptr) return oom_message;
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

// Runs `f`, turning every exception into an error string (NULL when `f` returned normally).
template <class F>
char* guard(F&& f) noexcept {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup(e.what());
  } catch (...) {
    return dup("unknown C++ exception");
  }
}

inline std::string str(const char* p, size_t n) { return std::string(p, n); }

inline std::chrono::milliseconds ms(int64_t v) { return std::chrono::milliseconds(v); }

}  // namespace ldist
