#!/usr/bin/env python
"""Train on LIC-compressed Parquet shards, checkpoint mid-epoch, resume exactly.

Streams the shards with ``licstore.torch.LICIterableDataset`` (shuffled, split over DataLoader
workers, decoded in the workers) through ``ResumableDataLoader``, trains a tiny convolutional
autoencoder on the images (resized to ``--size``), and saves a checkpoint holding the model,
the optimizer, the step and the dataset state. ``--resume`` continues from a checkpoint with
the batches an uninterrupted run would have seen (same seed, batch size and workers), so the
losses match too. Each step prints its loss (and ``--log-column`` values, e.g. a row id).

    python recipes/train_from_compressed_shards.py --shards 'data/*.parquet' --steps 20 \\
        --stop-after 8 --checkpoint ckpt.pt          # "interrupted" after 8 steps
    python recipes/train_from_compressed_shards.py --shards 'data/*.parquet' --steps 20 \\
        --resume ckpt.pt                             # steps 9..20

Without ``--shards``, shards are made first from Kodak (next to the repository) or the photos
bundled with licstore, with the default model at 0.3 bpp (in a temporary folder).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pyarrow as pa
import torch
import torch.nn as nn
import torch.nn.functional as F

import licstore
from licstore.torch import LICIterableDataset, ResumableDataLoader


class TinyAutoencoder(nn.Module):
    """Small enough to train in seconds on a CPU; the point is the data path."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 8, 3, padding=1),
        )
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(8, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class Resize:
    """CHW uint8 tensor -> 3xSxS float in [0, 1]; deterministic, so a resumed run sees the
    same inputs (a random crop would also need its generator in the checkpoint)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x[None].float().div_(255)
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)[0]


def demo_shards(out: Path) -> str:
    """Two small shards of real photos, written with licstore.parquet.write_table."""
    from licstore.cli import demo_images

    files = [Path(p) for p in demo_images()]
    half = (len(files) + 1) // 2
    for k, part in enumerate((files[:half], files[half:])):
        table = pa.table(
            {"image": [p.read_bytes() for p in part], "id": [str(p.name) for p in part]}
        )
        licstore.parquet.write_table(
            table,
            out / f"part-{k}.parquet",
            {"image": licstore.LICImage(bpp=0.3)},
            row_group_size=2,
        )
    return str(out / "*.parquet")


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", help="Parquet shards: path, glob, folder or fsspec URL")
    ap.add_argument("--steps", type=int, default=20, help="total optimizer steps")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--size", type=int, default=64, help="images are resized to size x size")
    ap.add_argument("--shuffle-buffer", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--checkpoint", help="save model, optimizer and data position here")
    ap.add_argument("--save-every", type=int, default=0, help="also save every N steps")
    ap.add_argument("--stop-after", type=int, default=None, help="save and stop after N steps")
    ap.add_argument("--resume", help="checkpoint to continue from")
    ap.add_argument("--log-column", default=None, help="print this column's values per step")
    args = ap.parse_args(argv)

    shards = args.shards or demo_shards(Path(tempfile.mkdtemp(prefix="licstore-shards-")))
    columns = [args.log_column] if args.log_column else None
    dataset = LICIterableDataset(
        shards,
        columns=columns,
        output="tensor",
        mode="RGB",
        transform=Resize(args.size),
        shuffle_buffer=args.shuffle_buffer,
        seed=args.seed,
    )
    loader = ResumableDataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)

    torch.manual_seed(args.seed)
    model = TinyAutoencoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    if args.resume:
        ckpt = torch.load(args.resume, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["data"])  # also sets the epoch
        step = ckpt["step"]
        print(f"resumed at step {step}, epoch {dataset.epoch}, rows {ckpt['data']['rows']}")

    def save() -> None:
        if args.checkpoint:
            state = {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "data": loader.state_dict(),  # plain ints and strings: JSON-able
            }
            torch.save(state, args.checkpoint)
            print(f"saved {args.checkpoint} at step {step}")

    stop = min(args.steps, args.stop_after) if args.stop_after is not None else args.steps
    epoch = dataset.epoch
    while step < stop:
        dataset.set_epoch(epoch)  # keeps a loaded state when it is this epoch's
        start_step = step
        for batch in loader:
            images = batch["image"] if columns else batch
            loss = F.mse_loss(model(images), images)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            logged = f" {args.log_column}={_as_list(batch[args.log_column])}" if columns else ""
            print(f"step {step} epoch {epoch} loss {loss.item():.8f}{logged}", flush=True)
            if args.save_every and step % args.save_every == 0:
                save()
            if step >= stop:
                break
        else:
            if step == start_step and not any(loader.state_dict()["rows"]):
                raise SystemExit(f"no rows in {shards}")
            epoch += 1
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
