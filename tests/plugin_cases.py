"""Tiny plug-ins with the challenge signature that exercise the adapter: randomness, in-place changes,
and every way a submission can go wrong (used by tests/test_plugins.py)."""
import random
import sys

import numpy as np
import torch
from torch import nn


def noisy(net, retain_loader, forget_loader, val_loader):
    """Adds noise drawn from torch's, numpy's and Python's global generators."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.rand_like(p) + 0.01 * float(np.random.rand()) + 0.01 * random.random())
    return net


def in_place(net, retain_loader, forget_loader, val_loader):
    """Zeroes the last layer's bias in place and returns nothing."""
    with torch.no_grad():
        list(net.parameters())[-1].zero_()


def tuple_reader(net, retain_loader, forget_loader, val_loader):
    """Reads batches as (x, y) by position."""
    for batch in retain_loader:
        batch[0], batch[1]
    return net


def dict_reader(net, retain_loader, forget_loader, val_loader):
    """Reads batches as Kaggle dicts."""
    for batch in retain_loader:
        batch["image"], batch["age_group"]
    return net


FORMAT_AGNOSTIC_SEEN: list = []  # (how the batch was read, its inputs), for the test to check


def format_agnostic(net, retain_loader, forget_loader, val_loader):
    """Falls back from dict to tuple batches by catching the indexing error, as some submissions do."""
    for batch in retain_loader:
        try:
            x, how = batch["image"], "dict"
        except (TypeError, KeyError, IndexError):
            x, how = batch[0], "tuple"
        FORMAT_AGNOSTIC_SEEN.append((how, x.detach().cpu()))
    return net


def raises(net, retain_loader, forget_loader, val_loader):
    raise ValueError("the submission failed\nsecond line")


def exits(net, retain_loader, forget_loader, val_loader):
    sys.exit(0)


def returns_string(net, retain_loader, forget_loader, val_loader):
    return "done"


def returns_nan(net, retain_loader, forget_loader, val_loader):
    with torch.no_grad():
        next(iter(net.parameters())).fill_(float("nan"))
    return net


def returns_huge(net, retain_loader, forget_loader, val_loader):
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1e30)
    return net


def wrong_classes(net, retain_loader, forget_loader, val_loader):
    x, _ = next(iter(retain_loader))
    return nn.Linear(x.shape[1], 5)


def wrong_input(net, retain_loader, forget_loader, val_loader):
    return nn.Linear(3, 3)


def finetune(net, retain_loader, forget_loader, val_loader):
    """Shares the built-in finetune's name."""
    return net
