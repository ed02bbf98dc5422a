// Tensor entry points that tch's generated API leaves out (mirrored by src/ops.rs): the
// `value`/`alpha` scalars of addcmul_/addcdiv_/add_, which torch.optim passes, and setting a
// gradient to None (`zero_grad(set_to_none=True)`), and autocast on any device type (tch's
// covers CUDA only). Conventions as in ldist.h: NULL on
// success, else a malloc'd message; no C++ exception leaves these functions.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "common.h"

extern "C" {

char* ldist_addcmul_(ldist_tensor* self, const ldist_tensor* t1, const ldist_tensor* t2,
                     double value) {
  return ldist::guard([&] { self->addcmul_(*t1, *t2, value); });
}

char* ldist_addcdiv_(ldist_tensor* self, const ldist_tensor* t1, const ldist_tensor* t2,
                     double value) {
  return ldist::guard([&] { self->addcdiv_(*t1, *t2, value); });
}

char* ldist_add_(ldist_tensor* self, const ldist_tensor* other, double alpha) {
  return ldist::guard([&] { self->add_(*other, alpha); });
}

char* ldist_add(const ldist_tensor* self, const ldist_tensor* other, double alpha,
                ldist_tensor** out) {
  return ldist::guard([&] { *out = new at::Tensor(self->add(*other, alpha)); });
}

// torch.empty(size, dtype=dtype_of.dtype, pin_memory=True): page-locked host memory from the
// accelerator's caching host allocator, without the pageable tensor (and its copy) that
// Tensor.pin_memory() goes through. Fails without CUDA.
char* ldist_empty_pinned(const ldist_tensor* dtype_of, const int64_t* sizes, size_t ndim,
                         ldist_tensor** out) {
  return ldist::guard([&] {
    auto opts = at::TensorOptions().dtype(dtype_of->scalar_type()).pinned_memory(true);
    *out = new at::Tensor(at::empty(c10::IntArrayRef(sizes, ndim), opts));
  });
}

char* ldist_grad_set_to_none(ldist_tensor* param) {
  return ldist::guard([&] { param->mutable_grad().reset(); });
}

char* ldist_autocast_enter(int8_t device_type, int8_t dtype, ldist_autocast_prev* prev) {
  return ldist::guard([&] {
    auto dev = static_cast<c10::DeviceType>(device_type);
    prev->cache_enabled = at::autocast::is_autocast_cache_enabled();
    prev->enabled = at::autocast::is_autocast_enabled(dev);
    prev->dtype = static_cast<int8_t>(at::autocast::get_autocast_dtype(dev));
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::set_autocast_dtype(dev, static_cast<c10::ScalarType>(dtype));
    at::autocast::increment_nesting();
    at::autocast::set_autocast_cache_enabled(true);
  });
}

char* ldist_autocast_exit(int8_t device_type, const ldist_autocast_prev* prev) {
  return ldist::guard([&] {
    auto dev = static_cast<c10::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dev, prev->enabled);
    at::autocast::set_autocast_dtype(dev, static_cast<c10::ScalarType>(prev->dtype));
    at::autocast::set_autocast_cache_enabled(prev->cache_enabled);
  });
}

}  // extern "C"
