"""One process of the DDP test (tests/test_train_ddp.py), started by torchrun: trains a tiny run and
records, per rank, the samples its data loader fetched, its loss of each step and the weights it
ended with."""

import json
import os
import sys
from pathlib import Path

import torch

import mattecli.data.pipelines as pipelines
import mattecli.train.loop as loop
from mattecli.recipes import load_recipe
from mattecli.train.loop import TrainOptions, train

data, out, record = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
overrides = sys.argv[4:]
rank = int(os.environ["RANK"])
fetched = []
build_dataset = pipelines.build_dataset


def recording_build_dataset(*args, **kwargs):
    dataset = build_dataset(*args, **kwargs)

    class Recording(type(dataset)):
        def __getitem__(self, index):
            fetched.append([self.epoch, int(index)])
            return super().__getitem__(index)

    dataset.__class__ = Recording
    return dataset


pipelines.build_dataset = recording_build_dataset  # train() imports it by name at call time
losses = []  # this rank's loss of each step, on its share of the batch


def recording(loss_fn):
    def wrapped(pred, batch):
        loss = loss_fn(pred, batch)
        losses.append(loss.item())
        return loss

    return wrapped


loop.LOSSES = {name: recording(fn) for name, fn in loop.LOSSES.items()}  # train_step reads the module's dict
result = train(TrainOptions(load_recipe("demo-indexnet", overrides), data, out, progress=False, seed=2))
record.mkdir(parents=True, exist_ok=True)
torch.save({k: v.detach().cpu() for k, v in result.model.named_parameters()}, record / f"rank{rank}.pt")
(record / f"rank{rank}.json").write_text(json.dumps({"fetched": fetched, "iterations": result.iterations,
                                                       "losses": losses, "last_loss": result.last_loss}))
