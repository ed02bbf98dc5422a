mod cuda_kernels;
mod parity;
mod precision;
mod sched;
mod support;
