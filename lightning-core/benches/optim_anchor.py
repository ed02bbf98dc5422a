"""In-run anchors for benches/optim.rs: PyTorch's own optimizer/AMP/clip kernels on the same
sizes, timed the same way (CUDA sync + wall clock over reps). Prints one JSON object.

Usage: python optim_anchor.py NUMEL_PER_TENSOR NTENSORS REPS
"""
import json
import sys
import time

import torch


def timed(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main():
    per, nt, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    dev = torch.device("cuda")
    n = per * nt
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    out["copy_s"] = timed(lambda: dst.copy_(src), reps)
    del src, dst

    params = [torch.randn(per, device=dev, requires_grad=True) for _ in range(nt)]
    for p in params:
        p.grad = torch.randn_like(p)
    for name, kw in [("adamw_fused", {"fused": True}), ("adamw_foreach", {"foreach": True})]:
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, **kw)
        out[name + "_s"] = timed(opt.step, reps)
        del opt
    for name, kw in [("sgd_fused", {"fused": True}), ("sgd_foreach", {"foreach": True})]:
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, **kw)
        out[name + "_s"] = timed(opt.step, reps)
        del opt
    grads = [p.grad for p in params]
    found = torch.zeros(1, device=dev)
    inv = torch.full((1,), 1.0, device=dev)
    out["unscale_foreach_s"] = timed(
        lambda: torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv), reps
    )
    out["clip_foreach_s"] = timed(
        lambda: torch.nn.utils.clip_grad_norm_(params, 1e9, foreach=True), reps
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
