// The error bridge every shim over libtorch shares (lightning-sys's, and lightning-dist's, which
// includes this header through lightning-sys's `links` metadata): a C++ exception becomes a
// malloc'd message that the Rust side reads and frees with lsys_free_string
// (lightning_sys::shim::take_message).
#pragma once
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace lsys {

// Returned when even the error message cannot be allocated; lsys_free_string skips it.
inline char oom_message[] = "out of memory while reporting an error";

// A malloc'd copy of `s`, for the caller to free with lsys_free_string.
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

}  // namespace lsys
