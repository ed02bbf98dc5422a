// The C interface of lightning-dist's shim over libtorch's c10d (mirrored by src/ffi.rs).
//
// Conventions:
//   - every function that can fail returns `char*`: NULL on success, else a malloc'd message
//     (the C++ exception's text, without c10's backtrace) that the caller frees with
//     lightning-sys's lsys_free_string. No C++ exception ever leaves these functions.
//   - handles are opaque and owned by the caller, who frees them with the matching *_free.
//   - tensors are tch's `C_tensor*`, that is `at::Tensor*`. Tensors returned through an out
//     array are new heap `at::Tensor`s that the caller owns (tch's Tensor::from_ptr).
//   - strings from Rust come as (pointer, length), never NUL-terminated.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
namespace at { class Tensor; }
typedef at::Tensor ldist_tensor;
extern "C" {
#else
typedef void ldist_tensor;
#endif

typedef struct ldist_store ldist_store;
typedef struct ldist_pg ldist_pg;
typedef struct ldist_reducer ldist_reducer;

void ldist_free_bytes(uint8_t* p);

// ---- TCPStore --------------------------------------------------------------------------
// world_size < 0: unknown (no worker count). timeout_ms: for connecting and for every get/wait.
char* ldist_store_tcp_new(const char* host, size_t host_len, uint16_t port, int64_t world_size,
                          int is_server, int wait_for_workers, int64_t timeout_ms,
                          ldist_store** out);
void ldist_store_free(ldist_store* s);
char* ldist_store_port(ldist_store* s, uint16_t* out);
char* ldist_store_set(ldist_store* s, const char* key, size_t key_len, const uint8_t* value,
                      size_t value_len);
char* ldist_store_get(ldist_store* s, const char* key, size_t key_len, uint8_t** value,
                      size_t* value_len);
char* ldist_store_add(ldist_store* s, const char* key, size_t key_len, int64_t delta,
                      int64_t* out);
char* ldist_store_check(ldist_store* s, const char* const* keys, const size_t* key_lens,
                        size_t n, int* out);
// timeout_ms < 0: the store's timeout.
char* ldist_store_wait(ldist_store* s, const char* const* keys, const size_t* key_lens,
                       size_t n, int64_t timeout_ms);
char* ldist_store_delete_key(ldist_store* s, const char* key, size_t key_len, int* out);
char* ldist_store_num_keys(ldist_store* s, int64_t* out);
char* ldist_store_wait_for_workers(ldist_store* s);
char* ldist_store_set_timeout(ldist_store* s, int64_t timeout_ms);

// ---- ProcessGroup ----------------------------------------------------------------------
// The group's keys live under `prefix` in the store (a c10d PrefixStore).
char* ldist_pg_new_gloo(ldist_store* store, const char* prefix, size_t prefix_len, int rank,
                        int size, int64_t timeout_ms, ldist_pg** out);
// Defined in cuda_shim.cpp; without NCCL support compiled in, it returns an error.
char* ldist_pg_new_nccl(ldist_store* store, const char* prefix, size_t prefix_len, int rank,
                        int size, int64_t timeout_ms, ldist_pg** out);
int ldist_nccl_compiled(void);
void ldist_pg_free(ldist_pg* pg);
int ldist_pg_rank(const ldist_pg* pg);
int ldist_pg_size(const ldist_pg* pg);
// op: 0 sum, 1 avg, 2 product, 3 min, 4 max (c10d's RedOpType numbering).
char* ldist_pg_all_reduce(ldist_pg* pg, ldist_tensor* const* ts, size_t n, int op);
char* ldist_pg_broadcast(ldist_pg* pg, ldist_tensor* const* ts, size_t n, int root);
// out: an array of size(pg) slots, filled with new tensors.
char* ldist_pg_all_gather(ldist_pg* pg, const ldist_tensor* t, ldist_tensor** out);
// FSDP's collectives: `out` holds size(pg) x numel(in) elements (all_gather_into_tensor);
// `in` holds size(pg) x numel(out) elements, rank r receives block r reduced (op as above).
char* ldist_pg_all_gather_into(ldist_pg* pg, ldist_tensor* out, const ldist_tensor* in);
char* ldist_pg_reduce_scatter_into(ldist_pg* pg, ldist_tensor* out, const ldist_tensor* in,
                                   int op);
char* ldist_pg_barrier(ldist_pg* pg);
char* ldist_pg_broadcast_coalesced(ldist_pg* pg, ldist_tensor* const* ts, size_t n,
                                   size_t buffer_bytes, int root);

// ---- Reducer (DDP) ---------------------------------------------------------------------
char* ldist_reducer_new(ldist_pg* pg, ldist_tensor* const* params, size_t n,
                        int64_t bucket_bytes_cap, int64_t first_bucket_bytes_cap,
                        int find_unused_parameters, int gradient_as_bucket_view,
                        int init_sync, ldist_reducer** out);
void ldist_reducer_free(ldist_reducer* r);
// DDP's pre-forward: prepare_for_forward (when syncing), then _rebuild_buckets (grad mode on).
// *rebuilt is set to 1 when the buckets were rebuilt in this call.
char* ldist_reducer_pre_forward(ldist_reducer* r, int require_sync, int* rebuilt);
// DDP's post-forward: prepare_for_backward(outputs) (outputs only with find_unused_parameters).
char* ldist_reducer_prepare_for_backward(ldist_reducer* r, ldist_tensor* const* outputs,
                                         size_t n);
// The number of gradient buckets (after a rebuild, the layout in gradient-ready order).
char* ldist_reducer_bucket_count(ldist_reducer* r, size_t* out);
int ldist_grad_mode_enabled(void);

#ifdef __cplusplus
}
#endif
