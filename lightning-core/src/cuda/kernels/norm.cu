// Global gradient 2-norm and clip (torch.nn.utils.clip_grad_norm_):
//   total = sqrt(sum g^2);  coef = min(max_norm / (total + 1e-6), 1);  g *= coef
// sumsq_*: each block adds its chunk's sum of squares into acc (a device double).
// clip_*: every block reads acc, scales its chunk; block 0 writes total to norm_out (float).
// No host synchronization: the norm stays on the device.

__device__ __forceinline__ float block_sum(float x) {
    __shared__ float warp[THREADS / 32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
    if ((threadIdx.x & 31) == 0) warp[threadIdx.x >> 5] = x;
    __syncthreads();
    x = threadIdx.x < THREADS / 32 ? warp[threadIdx.x] : 0.f;
    if (threadIdx.x < 32) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
    }
    return x;
}

template <typename T>
__device__ void sumsq_impl(const i64* tensors, const i64* chunks, double* acc) {
    typedef typename Elem<T>::storage S;
    Chunk c = my_chunk(tensors, chunks);
    const S* g = reinterpret_cast<const S*>(c.t[0]);
    float s = 0.f;
    for_chunk(c,
        [&](i64 i) {
            float x = Elem<T>::load(g, i);
            s += x * x;
        },
        [&](i64 i) {
            float4 x = Elem<T>::load4(g, i);
            s += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
        });
    s = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(acc, (double)s);
}

template <typename T>
__device__ void clip_impl(const i64* tensors, const i64* chunks, const double* acc, float max_norm,
                          float* norm_out) {
    typedef typename Elem<T>::storage S;
    Chunk c = my_chunk(tensors, chunks);
    S* g = reinterpret_cast<S*>(c.t[0]);
    float total = (float)sqrt(*acc);
    if (blockIdx.x == 0 && threadIdx.x == 0) *norm_out = total;
    float coef = fminf(max_norm / (total + 1e-6f), 1.0f);
    for_chunk(c,
        [&](i64 i) { Elem<T>::store(g, i, Elem<T>::load(g, i) * coef); },
        [&](i64 i) {
            float4 x = Elem<T>::load4(g, i);
            x.x *= coef; x.y *= coef; x.z *= coef; x.w *= coef;
            Elem<T>::store4(g, i, x);
        });
}

extern "C" __global__ void __launch_bounds__(THREADS) sumsq_f32(const i64* t, const i64* c, double* acc) { sumsq_impl<float>(t, c, acc); }
extern "C" __global__ void __launch_bounds__(THREADS) sumsq_f16(const i64* t, const i64* c, double* acc) { sumsq_impl<F16>(t, c, acc); }
extern "C" __global__ void __launch_bounds__(THREADS) sumsq_bf16(const i64* t, const i64* c, double* acc) { sumsq_impl<BF16>(t, c, acc); }
extern "C" __global__ void __launch_bounds__(THREADS) clip_f32(const i64* t, const i64* c, const double* acc, float m, float* out) { clip_impl<float>(t, c, acc, m, out); }
extern "C" __global__ void __launch_bounds__(THREADS) clip_f16(const i64* t, const i64* c, const double* acc, float m, float* out) { clip_impl<F16>(t, c, acc, m, out); }
extern "C" __global__ void __launch_bounds__(THREADS) clip_bf16(const i64* t, const i64* c, const double* acc, float m, float* out) { clip_impl<BF16>(t, c, acc, m, out); }
