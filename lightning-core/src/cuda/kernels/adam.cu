// Fused multi-tensor Adam / AdamW step, torch.optim.Adam's math (_single_tensor_adam order):
//   g = maximize ? -g : g
//   decoupled: p *= 1 - lr*wd   else: g += wd*p
//   m = lerp(m, g, 1-beta1);  v = v*beta2 + ((1-beta2)*g)*g
//   amsgrad: vmax = max(vmax, v), use vmax
//   p += (-step_size * m) / (sqrt(v)/bc2_sqrt + eps)
// Slots: p, g, exp_avg, exp_avg_sq, max_exp_avg_sq (f32 state; p/g of type T).

struct AdamArgs {
    float decay;        // 1 - lr*wd (decoupled) or 1
    float wd;           // L2 coefficient (coupled) or 0
    float w1;           // 1 - beta1
    float beta2;
    float omb2;         // 1 - beta2
    float neg_step;     // -lr / bias_correction1
    float bc2_sqrt;
    float eps;
    int flags;          // 1 amsgrad, 2 maximize
};

__device__ __forceinline__ float lerp_t(float a, float b, float w) {
    // ATen's lerp: weight < 0.5 ? a + w*(b-a) : b - (b-a)*(1-w)
    return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

// `vmax` is read and written only with amsgrad. (A pointer that was either a register's address
// or global memory kept a local-memory slot alive in adam_f16's SASS.)
__device__ __forceinline__ void adam_elem(float& p, float g, float& m, float& v, bool amsgrad,
                                          float& vmax, const AdamArgs& a) {
    if (a.flags & 2) g = -g;
    p = p * a.decay;
    g = g + a.wd * p;
    m = lerp_t(m, g, a.w1);
    v = v * a.beta2 + (a.omb2 * g) * g;
    float vv = v;
    if (amsgrad) { vv = fmaxf(vmax, v); vmax = vv; }
    float denom = sqrtf(vv) / a.bc2_sqrt + a.eps;
    p = p + (a.neg_step * m) / denom;
}

template <typename T>
__device__ void adam_impl(const i64* tensors, const i64* chunks, AdamArgs a) {
    typedef typename Elem<T>::storage S;
    Chunk c = my_chunk(tensors, chunks);
    S* p = reinterpret_cast<S*>(c.t[0]);
    const S* g = reinterpret_cast<const S*>(c.t[1]);
    float* m = reinterpret_cast<float*>(c.t[2]);
    float* v = reinterpret_cast<float*>(c.t[3]);
    float* vm = (a.flags & 1) ? reinterpret_cast<float*>(c.t[4]) : 0;
    for_chunk(c,
        [&](i64 i) {
            float pp = Elem<T>::load(p, i), mm = m[i], vv = v[i], xx = vm ? vm[i] : 0.f;
            adam_elem(pp, Elem<T>::load(g, i), mm, vv, vm != 0, xx, a);
            Elem<T>::store(p, i, pp); m[i] = mm; v[i] = vv;
            if (vm) vm[i] = xx;
        },
        [&](i64 i) {
            float4 pp = Elem<T>::load4(p, i), gg = Elem<T>::load4(g, i);
            float4 mm = Elem<float>::load4(m, i), vv = Elem<float>::load4(v, i);
            float4 xx = vm ? Elem<float>::load4(vm, i) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float pk = get(pp, k), mk = get(mm, k), vk = get(vv, k), xk = get(xx, k);
                adam_elem(pk, get(gg, k), mk, vk, vm != 0, xk, a);
                set(pp, k, pk); set(mm, k, mk); set(vv, k, vk); set(xx, k, xk);
            }
            Elem<T>::store4(p, i, pp);
            Elem<float>::store4(m, i, mm);
            Elem<float>::store4(v, i, vv);
            if (vm) Elem<float>::store4(vm, i, xx);
        });
}

extern "C" __global__ void __launch_bounds__(THREADS) adam_f32(const i64* t, const i64* c, AdamArgs a) { adam_impl<float>(t, c, a); }
extern "C" __global__ void __launch_bounds__(THREADS) adam_f16(const i64* t, const i64* c, AdamArgs a) { adam_impl<F16>(t, c, a); }
extern "C" __global__ void __launch_bounds__(THREADS) adam_bf16(const i64* t, const i64* c, AdamArgs a) { adam_impl<BF16>(t, c, a); }
