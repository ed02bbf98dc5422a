// libtorch's current CUDA stream, which tch does not expose (mirrored by src/cuda.rs). build.rs
// compiles it with -DLSYS_WITH_CUDA -DUSE_CUDA when CUDA's headers (runtime, crt, cccl) are
// found; otherwise without them, and then every function here only reports that CUDA support
// was not compiled in.
#include "lsys.h"
#include "lsys_common.h"

#ifdef LSYS_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

extern "C" int lsys_cuda_compiled(void) { return 1; }

extern "C" char* lsys_current_cuda_stream(int device, void** out) {
  return lsys::guard([&] {
    *out = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
  });
}

extern "C" char* lsys_cuda_pool_stream(int device, void** out) {
  return lsys::guard([&] {
    *out = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device)).stream();
  });
}

extern "C" char* lsys_set_current_cuda_stream(int device, void* stream) {
  return lsys::guard([&] {
    auto index = static_cast<c10::DeviceIndex>(device);
    auto def = c10::cuda::getDefaultCUDAStream(index);
    auto s = stream == static_cast<void*>(def.stream())
                 ? def
                 : c10::cuda::getStreamFromExternal(static_cast<cudaStream_t>(stream), index);
    c10::cuda::setCurrentCUDAStream(s);
  });
}

#else

extern "C" int lsys_cuda_compiled(void) { return 0; }

static char* no_cuda() { return lsys::dup("CUDA support was not compiled into lightning-sys"); }
extern "C" char* lsys_current_cuda_stream(int, void**) { return no_cuda(); }
extern "C" char* lsys_cuda_pool_stream(int, void**) { return no_cuda(); }
extern "C" char* lsys_set_current_cuda_stream(int, void*) { return no_cuda(); }

#endif
