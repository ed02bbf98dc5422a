// Fused multi-tensor SGD step, torch.optim.SGD's math (_single_tensor_sgd order):
//   g = maximize ? -g : g;  g += wd*p
//   momentum: buf = first ? g : buf*momentum + (1-dampening)*g;  g = nesterov ? g + momentum*buf : buf
//   p -= lr*g
// Slots: p, g, momentum_buffer (type T); slot 7 = 1 when the buffer starts at this step.

struct SgdArgs {
    float lr;
    float wd;
    float momentum;
    float omd;          // 1 - dampening
    int flags;          // 1 maximize, 2 nesterov, 4 has momentum
};

__device__ __forceinline__ void sgd_elem(float& p, float g, float& b, bool first, const SgdArgs& a) {
    if (a.flags & 1) g = -g;
    g = g + a.wd * p;
    if (a.flags & 4) {
        b = first ? g : b * a.momentum + a.omd * g;
        g = (a.flags & 2) ? g + a.momentum * b : b;
    }
    p = p - a.lr * g;
}

template <typename T>
__device__ void sgd_impl(const i64* tensors, const i64* chunks, SgdArgs a) {
    typedef typename Elem<T>::storage S;
    Chunk c = my_chunk(tensors, chunks);
    S* p = reinterpret_cast<S*>(c.t[0]);
    const S* g = reinterpret_cast<const S*>(c.t[1]);
    S* b = (a.flags & 4) ? reinterpret_cast<S*>(c.t[2]) : 0;
    bool first = c.t[7] != 0;
    for_chunk(c,
        [&](i64 i) {
            float pp = Elem<T>::load(p, i), bb = (b && !first) ? Elem<T>::load(b, i) : 0.f;
            sgd_elem(pp, Elem<T>::load(g, i), bb, first, a);
            Elem<T>::store(p, i, pp);
            if (b) Elem<T>::store(b, i, bb);
        },
        [&](i64 i) {
            float4 pp = Elem<T>::load4(p, i), gg = Elem<T>::load4(g, i);
            float4 bb = (b && !first) ? Elem<T>::load4(b, i) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float pk = get(pp, k), bk = get(bb, k);
                sgd_elem(pk, get(gg, k), bk, first, a);
                set(pp, k, pk); set(bb, k, bk);
            }
            Elem<T>::store4(p, i, pp);
            if (b) Elem<T>::store4(b, i, bb);
        });
}

extern "C" __global__ void __launch_bounds__(THREADS) sgd_f32(const i64* t, const i64* c, SgdArgs a) { sgd_impl<float>(t, c, a); }
extern "C" __global__ void __launch_bounds__(THREADS) sgd_f16(const i64* t, const i64* c, SgdArgs a) { sgd_impl<F16>(t, c, a); }
extern "C" __global__ void __launch_bounds__(THREADS) sgd_bf16(const i64* t, const i64* c, SgdArgs a) { sgd_impl<BF16>(t, c, a); }
