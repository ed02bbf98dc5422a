// Tensor entry points that tch's generated API leaves out (mirrored by src/ops.rs): the
// `value`/`alpha` scalars of addcmul_/addcdiv_/add_, which torch.optim passes, setting a
// gradient to None (`zero_grad(set_to_none=True)`), pinned host memory, and autocast on any
// device type (tch's covers CUDA only). Conventions as in lsys.h: NULL on success, else a
// malloc'd message; no C++ exception leaves these functions.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "lsys.h"
#include "lsys_common.h"

extern "C" {

void lsys_free_string(char* s) {
  if (s != lsys::oom_message) std::free(s);
}

char* lsys_addcmul_(lsys_tensor* self, const lsys_tensor* t1, const lsys_tensor* t2,
                    double value) {
  return lsys::guard([&] { self->addcmul_(*t1, *t2, value); });
}

char* lsys_addcdiv_(lsys_tensor* self, const lsys_tensor* t1, const lsys_tensor* t2,
                    double value) {
  return lsys::guard([&] { self->addcdiv_(*t1, *t2, value); });
}

char* lsys_add_(lsys_tensor* self, const lsys_tensor* other, double alpha) {
  return lsys::guard([&] { self->add_(*other, alpha); });
}

char* lsys_add(const lsys_tensor* self, const lsys_tensor* other, double alpha,
               lsys_tensor** out) {
  return lsys::guard([&] { *out = new at::Tensor(self->add(*other, alpha)); });
}

// torch.empty(size, dtype=dtype_of.dtype, pin_memory=True): page-locked host memory from the
// accelerator's caching host allocator, without the pageable tensor (and its copy) that
// Tensor.pin_memory() goes through. Fails without CUDA.
char* lsys_empty_pinned(const lsys_tensor* dtype_of, const int64_t* sizes, size_t ndim,
                        lsys_tensor** out) {
  return lsys::guard([&] {
    auto opts = at::TensorOptions().dtype(dtype_of->scalar_type()).pinned_memory(true);
    *out = new at::Tensor(at::empty(c10::IntArrayRef(sizes, ndim), opts));
  });
}

char* lsys_grad_set_to_none(lsys_tensor* param) {
  return lsys::guard([&] { param->mutable_grad().reset(); });
}

char* lsys_grad_set(lsys_tensor* param, const lsys_tensor* grad) {
  return lsys::guard([&] {
    TORCH_CHECK(grad->sizes() == param->sizes(), "a gradient of size ", grad->sizes(),
                " for a parameter of size ", param->sizes());
    param->mutable_grad() = *grad;
  });
}

int lsys_same_variable(const lsys_tensor* a, const lsys_tensor* b) {
  return a->unsafeGetTensorImpl() == b->unsafeGetTensorImpl() ? 1 : 0;
}

char* lsys_register_grad_hook(lsys_tensor* t, lsys_hook_fn fn, uint64_t tag) {
  return lsys::guard([&] {
    t->register_hook([fn, tag](const at::TensorBase&) { fn(tag); });
  });
}

namespace {
struct PostAccHook : torch::autograd::PostAccumulateGradHook {
  lsys_hook_fn fn;
  uint64_t tag;
  PostAccHook(lsys_hook_fn f, uint64_t t) : fn(f), tag(t) {}
  void operator()(const torch::autograd::Variable&) override { fn(tag); }
};
}  // namespace

char* lsys_set_post_accumulate_grad_hook(lsys_tensor* t, lsys_hook_fn fn, uint64_t tag) {
  return lsys::guard([&] {
    TORCH_CHECK(t->is_leaf(), "a post-accumulate-grad hook needs a leaf tensor");
    std::unique_ptr<torch::autograd::PostAccumulateGradHook> hook;
    if (fn != nullptr) hook = std::make_unique<PostAccHook>(fn, tag);
    torch::autograd::impl::set_post_acc_grad_hooks(*t, std::move(hook));
  });
}

char* lsys_autocast_enter(int8_t device_type, int8_t dtype, lsys_autocast_prev* prev) {
  return lsys::guard([&] {
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

char* lsys_autocast_exit(int8_t device_type, const lsys_autocast_prev* prev) {
  return lsys::guard([&] {
    auto dev = static_cast<c10::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dev, prev->enabled);
    at::autocast::set_autocast_dtype(dev, static_cast<c10::ScalarType>(prev->dtype));
    at::autocast::set_autocast_cache_enabled(prev->cache_enabled);
  });
}

}  // extern "C"
