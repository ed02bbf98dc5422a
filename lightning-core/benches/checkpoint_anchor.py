import sys, time, torch
t = time.perf_counter()
s = torch.load(sys.argv[1], weights_only=True)
print(time.perf_counter() - t)
