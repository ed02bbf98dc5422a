// Tensor entry points that tch's generated API leaves out (mirrored by src/ops.rs): the
// `value`/`alpha` scalars of addcmul_/addcdiv_/add_, which torch.optim passes, and setting a
// gradient to None (`zero_grad(set_to_none=True)`). Conventions as in ldist.h: NULL on
// success, else a malloc'd message; no C++ exception leaves these functions.
#include <ATen/core/Tensor.h>

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

char* ldist_grad_set_to_none(ldist_tensor* param) {
  return ldist::guard([&] { param->mutable_grad().reset(); });
}

}  // extern "C"
