# The dataloader bench's anchor: torch.utils.data.DataLoader over the same image folder with
# PIL, the transforms torchvision's RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)),
# RandomHorizontalFlip and Normalize apply to PIL images (crop + bilinear resize, flip,
# ToTensor, normalize), written out because torchvision is not installed.
# argv: root, crop size, batch, workers, rounds. Prints one JSON line: samples/s per round.
import json, math, os, random, sys, time
import numpy as np
import torch
from PIL import Image

root, size, batch, workers, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
samples = [(os.path.join(root, c, f), i) for i, c in enumerate(classes) for f in sorted(os.listdir(os.path.join(root, c)))]
mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

def crop_params(w, h, rng):
    area = w * h
    lr = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(*lr))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, w - cw), rng.randint(0, h - ch), cw, ch
    return 0, 0, w, h

class Folder(torch.utils.data.Dataset):
    def __len__(self):
        return len(samples)
    def __getitem__(self, i):
        path, label = samples[i]
        rng = random.Random(i)
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        left, top, cw, ch = crop_params(img.width, img.height, rng)
        img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        return (x - mean) / std, label

loader = torch.utils.data.DataLoader(Folder(), batch_size=batch, shuffle=True, num_workers=workers,
                                     persistent_workers=workers > 0)
rates = []
for _ in range(rounds):
    t0, n = time.perf_counter(), 0
    for x, y in loader:
        n += x.shape[0]
    rates.append(n / (time.perf_counter() - t0))
print(json.dumps({"samples_per_s": rates}))
