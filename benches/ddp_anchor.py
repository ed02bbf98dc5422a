import json, os, sys, time
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
mode, out = sys.argv[1], sys.argv[2]
d_in, hidden, batch, steps = (int(a) for a in sys.argv[3:7])
WORLD = 2

def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10))

def data():
    g = torch.Generator().manual_seed(0)
    n = WORLD * batch * steps
    return torch.randn(n, d_in, generator=g), torch.randint(0, 10, (n,), generator=g)

def write(stamps, world, **phases):
    with open(out, "w") as f:
        json.dump(dict(stamps=stamps, threads=torch.get_num_threads(), world=world, **phases), f)

if mode in ("ddp", "fsdp2"):
    import torch.distributed as dist
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode == "ddp":
        m = torch.nn.parallel.DistributedDataParallel(model())
    else:
        # FSDP2 on the root module only: one unit, as ours.
        from torch.distributed.fsdp import fully_shard
        m = model()
        fully_shard(m)
    opt = torch.optim.Adam(m.parameters())
    x, y = data()
    stamps, fwd_bwd, step = [], [], []
    origin = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        j = (i * world + rank) * batch
        loss = F.cross_entropy(m(x[j:j + batch]), y[j:j + batch])
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        stamps.append(t2 - origin)
        fwd_bwd.append((t1 - t0) * 1e3)
        step.append((t2 - t1) * 1e3)
    if rank == 0:
        write(stamps, world, fwd_bwd=fwd_bwd, opt=step)
    dist.destroy_process_group()
elif mode == "lightning":
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model()
        def training_step(self, b, i):
            return F.cross_entropy(self.net(b[0]), b[1])
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters())

    class Clock(L.Callback):
        def __init__(self):
            self.t0 = time.perf_counter()
            self.stamps = []
        def on_train_start(self, trainer, pl_module):
            torch.set_num_threads(1)
        def on_train_batch_end(self, *args):
            self.stamps.append(time.perf_counter() - self.t0)

    clock = Clock()
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy="ddp", max_steps=steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[clock])
    trainer.fit(M(), DataLoader(TensorDataset(*data()), batch_size=batch))
    if trainer.global_rank == 0:
        write(clock.stamps, trainer.world_size)
else:
    sys.exit("unknown mode " + mode)
