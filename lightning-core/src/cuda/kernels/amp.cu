// AMP: unscale gradients and flag non-finite values (torch's
// _amp_foreach_non_finite_check_and_unscale_: the check looks at the scaled value; every value
// is multiplied by inv_scale). Slot 0 = grad (type T). found_inf is a device float set to 1.

template <typename T>
__device__ void unscale_impl(const i64* tensors, const i64* chunks, const float* inv_scale_p,
                             float* found_inf) {
    typedef typename Elem<T>::storage S;
    Chunk c = my_chunk(tensors, chunks);
    S* g = reinterpret_cast<S*>(c.t[0]);
    const float inv = *inv_scale_p;
    bool bad = false;
    for_chunk(c,
        [&](i64 i) {
            float x = Elem<T>::load(g, i);
            bad |= !isfinite(x);
            Elem<T>::store(g, i, x * inv);
        },
        [&](i64 i) {
            float4 x = Elem<T>::load4(g, i);
            bad |= !(isfinite(x.x) && isfinite(x.y) && isfinite(x.z) && isfinite(x.w));
            x.x *= inv; x.y *= inv; x.z *= inv; x.w *= inv;
            Elem<T>::store4(g, i, x);
        });
    if (__syncthreads_or(bad) && threadIdx.x == 0) *found_inf = 1.0f;
}

extern "C" __global__ void __launch_bounds__(THREADS) unscale_f32(const i64* t, const i64* c, const float* inv, float* found) { unscale_impl<float>(t, c, inv, found); }
extern "C" __global__ void __launch_bounds__(THREADS) unscale_f16(const i64* t, const i64* c, const float* inv, float* found) { unscale_impl<F16>(t, c, inv, found); }
extern "C" __global__ void __launch_bounds__(THREADS) unscale_bf16(const i64* t, const i64* c, const float* inv, float* found) { unscale_impl<BF16>(t, c, inv, found); }
