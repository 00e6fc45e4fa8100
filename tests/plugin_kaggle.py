"""A submission in the style of the Kaggle NeurIPS'23 unlearning challenge: batches are dicts
{"image": x, "age_group": y}, `net` is changed in place and nothing is returned. It perturbs the
weights with uniform noise, then fine-tunes on the retain set with a cosine schedule."""
import torch
from torch import nn, optim

NOISE = 0.01
EPOCHS = 1


def unlearning(net, retain_loader, forget_loader, val_loader):
    """Perturb the weights, then fine-tune on the retain set (in place)."""
    device = next(net.parameters()).device
    with torch.no_grad():
        for p in net.parameters():
            p.add_(NOISE * (torch.rand_like(p) - 0.5))
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * len(retain_loader))
    net.train()
    for _ in range(EPOCHS):
        for sample in retain_loader:
            inputs, targets = sample["image"].to(device), sample["age_group"].to(device)
            optimizer.zero_grad()
            loss = criterion(net(inputs), targets)
            loss.backward()
            optimizer.step()
            scheduler.step()
    net.eval()
