// Shared helpers of lightning-rs's fused kernels (compiled by NVRTC; no CUDA headers needed).
//
// Multi-tensor layout: `tensors` holds TSLOTS int64 per tensor
//   [ptr0, ptr1, ptr2, ptr3, ptr4, numel, aligned, flag]
// and `chunks` holds 2 int64 per block: [tensor index, first element]. One block handles
// CHUNK elements of one tensor; aligned tensors use 16-byte (float4) loads for f32 and
// 8-byte loads for 16-bit types.
#define TSLOTS 8
#define CHUNK 65536
#define THREADS 256

typedef unsigned short u16;
typedef long long i64;

struct __align__(8) half4 { u16 x, y, z, w; };

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float b2f(u16 b) { return __uint_as_float(((unsigned int)b) << 16); }
__device__ __forceinline__ u16 f2b(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)0x7fc0u;  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);                           // round to nearest even
    return (u16)(u >> 16);
}

// Element type tags: float (f32), struct F16 (half), struct BF16 (bfloat16).
struct F16 {};
struct BF16 {};
template <typename T> struct Elem;
template <> struct Elem<float> {
    typedef float storage;
    typedef float4 vec;
    static __device__ __forceinline__ float load(const float* p, i64 i) { return p[i]; }
    static __device__ __forceinline__ void store(float* p, i64 i, float v) { p[i] = v; }
    static __device__ __forceinline__ float4 load4(const float* p, i64 i) {
        return *reinterpret_cast<const float4*>(p + i);
    }
    static __device__ __forceinline__ void store4(float* p, i64 i, float4 v) {
        *reinterpret_cast<float4*>(p + i) = v;
    }
};
template <> struct Elem<F16> {
    typedef u16 storage;
    static __device__ __forceinline__ float load(const u16* p, i64 i) { return h2f(p[i]); }
    static __device__ __forceinline__ void store(u16* p, i64 i, float v) { p[i] = f2h(v); }
    static __device__ __forceinline__ float4 load4(const u16* p, i64 i) {
        half4 h = *reinterpret_cast<const half4*>(p + i);
        return make_float4(h2f(h.x), h2f(h.y), h2f(h.z), h2f(h.w));
    }
    static __device__ __forceinline__ void store4(u16* p, i64 i, float4 v) {
        half4 h; h.x = f2h(v.x); h.y = f2h(v.y); h.z = f2h(v.z); h.w = f2h(v.w);
        *reinterpret_cast<half4*>(p + i) = h;
    }
};
template <> struct Elem<BF16> {
    typedef u16 storage;
    static __device__ __forceinline__ float load(const u16* p, i64 i) { return b2f(p[i]); }
    static __device__ __forceinline__ void store(u16* p, i64 i, float v) { p[i] = f2b(v); }
    static __device__ __forceinline__ float4 load4(const u16* p, i64 i) {
        half4 h = *reinterpret_cast<const half4*>(p + i);
        return make_float4(b2f(h.x), b2f(h.y), b2f(h.z), b2f(h.w));
    }
    static __device__ __forceinline__ void store4(u16* p, i64 i, float4 v) {
        half4 h; h.x = f2b(v.x); h.y = f2b(v.y); h.z = f2b(v.z); h.w = f2b(v.w);
        *reinterpret_cast<half4*>(p + i) = h;
    }
};

__device__ __forceinline__ float get(const float4& v, int k) {
    return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}
__device__ __forceinline__ void set(float4& v, int k, float x) {
    if (k == 0) v.x = x; else if (k == 1) v.y = x; else if (k == 2) v.z = x; else v.w = x;
}

// The chunk this block handles: tensor slots, [start, end) and whether float4 access is safe.
struct Chunk {
    const i64* t;
    i64 start, end;
    bool aligned;
};
__device__ __forceinline__ Chunk my_chunk(const i64* tensors, const i64* chunks) {
    Chunk c;
    i64 ti = chunks[2 * blockIdx.x];
    c.t = tensors + ti * TSLOTS;
    c.start = chunks[2 * blockIdx.x + 1];
    i64 n = c.t[5];
    c.end = c.start + CHUNK < n ? c.start + CHUNK : n;
    c.aligned = c.t[6] != 0;
    return c;
}

// Runs `vec(i)` for each aligned group of 4 elements (i = first of the 4), then `scalar(i)`
// for the remaining elements of the chunk; threads stride by blockDim.
template <typename FS, typename FV>
__device__ __forceinline__ void for_chunk(const Chunk& c, FS scalar, FV vec) {
    i64 vend = c.aligned ? c.start + ((c.end - c.start) & ~(i64)3) : c.start;
    for (i64 i = c.start + 4 * (i64)threadIdx.x; i < vend; i += 4 * (i64)blockDim.x) vec(i);
    for (i64 i = vend + threadIdx.x; i < c.end; i += blockDim.x) scalar(i);
}
