import json, sys, time, math, torch, warnings
import torch.nn.functional as F
warnings.filterwarnings("ignore")
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = json.loads(sys.argv[4])
torch.set_num_threads(cfg["threads"])
blob = torch.load(path, weights_only=True)
tokens, init = blob["tokens"], blob["state_dict"]
dev = torch.device(cfg["device"])
V, T, C, H, L, S, B = (cfg[k] for k in ("vocab", "ctx", "width", "heads", "layers", "steps", "batch"))

class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(C); self.qkv = torch.nn.Linear(C, 3 * C)
        self.proj = torch.nn.Linear(C, C); self.ln2 = torch.nn.LayerNorm(C)
        self.fc = torch.nn.Linear(C, 4 * C); self.out = torch.nn.Linear(4 * C, C)
    def forward(self, h):
        b, t, c = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(c, -1)
        sp = lambda x: x.view(b, t, H, c // H).transpose(1, 2)
        y = F.scaled_dot_product_attention(sp(q), sp(k), sp(v), is_causal=True)
        h = h + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return h + self.out(F.gelu(self.fc(self.ln2(h))))

class Gpt(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(V, C); self.pos = torch.nn.Embedding(T, C)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(L))
        self.ln_f = torch.nn.LayerNorm(C); self.head = torch.nn.Linear(C, V)
    def loss(self, seq):
        x, y = seq[:, :-1], seq[:, 1:]
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        for b in self.blocks:
            h = b(h)
        logits = self.head(self.ln_f(h)).float()
        return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))

def optim(params):
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused or None)
    warm = max(S // 10, 1)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, 0.1, 1.0, warm),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(S - warm, 1))], [warm])
    return opt, sched

def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()

model = Gpt(); model.load_state_dict(init); model.to(dev)
stamps = []
if mode == "plain":
    opt, sched = optim(model.parameters())
    amp = cfg["precision"] == "bf16-mixed"
    t0 = time.perf_counter()
    for i in range(S):
        seq = tokens[i * B:(i + 1) * B].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.loss(seq)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad()
        sync(); stamps.append(time.perf_counter() - t0)
else:
    import lightning.pytorch as pl
    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__(); self.net = model
        def training_step(self, batch, idx):
            loss = self.net.loss(batch[0]); self.log("train_loss", loss); return loss
        def configure_optimizers(self):
            opt, sched = optim(self.parameters())
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    class Stamp(pl.Callback):
        def on_train_batch_end(self, *a):
            sync(); stamps.append(time.perf_counter() - t0)
    t = pl.Trainer(max_steps=S, accelerator="gpu" if dev.type == "cuda" else "cpu", devices=1,
                   precision=cfg["precision"], gradient_clip_val=1.0, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[Stamp()])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens), batch_size=B)
    t0 = time.perf_counter()
    t.fit(Module(), loader)
    model.to(dev)
with torch.no_grad():
    final = model.loss(tokens[:B].to(dev)).item()
json.dump({"stamps": stamps, "loss": final, "threads": torch.get_num_threads()}, open(out, "w"))
