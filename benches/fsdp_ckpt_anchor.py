# PyTorch's side of benches/fsdp_ckpt.rs, under torchrun with 2 ranks (gloo, CPU): the same
# 5-layer MLP with FSDP2 (fully_shard on the root), one Adam step, then `repeats` timed
# dcp.save of get_state_dict(model, optimizer) and dcp.load of it back; rank 0 writes
# {"save": [s...], "load": [s...]} to argv[1].
import json, sys, time
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

torch.set_num_threads(1)
out, path, width, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU()) for _ in range(5)])
fully_shard(model)
opt = torch.optim.Adam(model.parameters())
model(torch.randn(4, width)).square().mean().backward()
opt.step()
saves, loads = [], []
for _ in range(repeats):
    dist.barrier()
    t0 = time.perf_counter()
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optimizer_0": osd}, checkpoint_id=path)
    dist.barrier()
    saves.append(time.perf_counter() - t0)
for _ in range(repeats):
    dist.barrier()
    t0 = time.perf_counter()
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optimizer_0": osd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer_0"])
    dist.barrier()
    loads.append(time.perf_counter() - t0)
if rank == 0:
    with open(out, "w") as f:
        json.dump({"save": saves, "load": loads}, f)
dist.destroy_process_group()
