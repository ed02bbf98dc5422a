// The C interface of lightning-sys's shim over libtorch (mirrored by src/ops.rs, src/cuda.rs and
// src/shim.rs): the tensor ops tch leaves out, autocast on any device type, pinned host memory
// and libtorch's CUDA streams.
//
// Conventions:
//   - every function that can fail returns `char*`: NULL on success, else a malloc'd message
//     (the C++ exception's text, without c10's backtrace) that the caller frees with
//     lsys_free_string. No C++ exception ever leaves these functions.
//   - tensors are tch's `C_tensor*`, that is `at::Tensor*`. Tensors returned through an out
//     parameter are new heap `at::Tensor`s that the caller owns (tch's Tensor::from_ptr).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
namespace at { class Tensor; }
typedef at::Tensor lsys_tensor;
extern "C" {
#else
typedef void lsys_tensor;
#endif

// Frees an error message returned by any shim function (lightning-dist's too).
void lsys_free_string(char* s);

// ---- Tensor ops tch leaves out (ops_shim.cpp) -------------------------------------------
// self += value * t1 * t2, as at::Tensor::addcmul_(t1, t2, value).
char* lsys_addcmul_(lsys_tensor* self, const lsys_tensor* t1, const lsys_tensor* t2,
                    double value);
// self += value * t1 / t2, as at::Tensor::addcdiv_(t1, t2, value).
char* lsys_addcdiv_(lsys_tensor* self, const lsys_tensor* t1, const lsys_tensor* t2,
                    double value);
// self += alpha * other, as at::Tensor::add_(other, alpha).
char* lsys_add_(lsys_tensor* self, const lsys_tensor* other, double alpha);
// *out = self + alpha * other (a new tensor the caller owns), as at::Tensor::add(other, alpha).
char* lsys_add(const lsys_tensor* self, const lsys_tensor* other, double alpha,
               lsys_tensor** out);
// param.grad = None.
char* lsys_grad_set_to_none(lsys_tensor* param);
// param.grad = grad (same size).
char* lsys_grad_set(lsys_tensor* param, const lsys_tensor* grad);
// Whether two handles are the same variable (one TensorImpl).
int lsys_same_variable(const lsys_tensor* a, const lsys_tensor* b);
// Autograd hooks calling back into Rust: `fn(tag)` runs on the thread driving the backward.
typedef void (*lsys_hook_fn)(uint64_t tag);
// A gradient hook on `t` (a non-leaf output): `fn(tag)` when its gradient is computed, before
// it flows into the ops that made `t` (the gradient is left unchanged).
char* lsys_register_grad_hook(lsys_tensor* t, lsys_hook_fn fn, uint64_t tag);
// The post-accumulate-grad hook of the leaf `t` (one per tensor, replacing any other; `fn`
// NULL removes it): `fn(tag)` after a backward accumulated into `t.grad`.
char* lsys_set_post_accumulate_grad_hook(lsys_tensor* t, lsys_hook_fn fn, uint64_t tag);
// torch.empty(sizes, dtype=dtype_of.dtype, pin_memory=True) (a new tensor the caller owns).
char* lsys_empty_pinned(const lsys_tensor* dtype_of, const int64_t* sizes, size_t ndim,
                        lsys_tensor** out);

// torch.autocast(device_type, dtype) as a pair of calls: enter saves the previous state of
// that device type into *prev; exit restores it (and clears the cast cache at nesting 0).
// device_type is c10::DeviceType (0 CPU, 1 CUDA), dtype c10::ScalarType (5 Half, 15 BFloat16).
typedef struct lsys_autocast_prev {
  int8_t dtype;
  bool enabled;
  bool cache_enabled;
} lsys_autocast_prev;
char* lsys_autocast_enter(int8_t device_type, int8_t dtype, lsys_autocast_prev* prev);
char* lsys_autocast_exit(int8_t device_type, const lsys_autocast_prev* prev);

// ---- libtorch's CUDA streams (cuda_shim.cpp; errors when CUDA was not compiled in) -------
int lsys_cuda_compiled(void);
// The current stream of `device` (a cudaStream_t; the legacy default stream is NULL).
char* lsys_current_cuda_stream(int device, void** out);
// A stream from libtorch's pool for `device` (not made current).
char* lsys_cuda_pool_stream(int device, void** out);
// Makes `stream` (from the two above) the current stream of `device`.
char* lsys_set_current_cuda_stream(int device, void* stream);

#ifdef __cplusplus
}
#endif
