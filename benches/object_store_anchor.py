import json, sys, time, fsspec, torch
endpoint, mib, ours = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fs = fsspec.filesystem("s3", key="testing", secret="testing",
                       client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"})
n = mib // 16
sd = {f"layer{i}.weight": torch.full((16 << 18,), float(i)) for i in range(n)}
saves, loads = [], []
for rep in range(2):
    t = time.perf_counter()
    with fs.open("bench/py.ckpt", "wb") as f:
        torch.save({"state_dict": sd}, f)
    saves.append(time.perf_counter() - t)
    fs.invalidate_cache()
    t = time.perf_counter()
    with fs.open("bench/py.ckpt", "rb") as f:
        back = torch.load(f, weights_only=True)
    loads.append(time.perf_counter() - t)
    assert len(back["state_dict"]) == n
with fs.open(ours, "rb") as f:
    theirs = torch.load(f, weights_only=True)["state_dict"]
ok = len(theirs) == n and all(float(t[0]) == float(i) for i, t in enumerate(theirs.values()))
print(json.dumps({"save": min(saves), "load": min(loads), "reads_ours": ok}))
