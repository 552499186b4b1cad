"""Command line of the data layer.

    python -m view_env.data make-shapes --root DIR --num-train N --num-val M --image-size S --seed K
    python -m view_env.data info shapes            # generates the default Shapes set on first use
    python -m view_env.data info coco --root ~/data/coco --split val --bank
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Sequence

from view_env.data.bank import ImageBank
from view_env.data.base import ImageDataset
from view_env.data.errors import DatasetFormatError, DatasetNotFoundError
from view_env.data.sources import DATASETS, load_dataset


def _make_shapes(args: argparse.Namespace) -> None:
    from view_env.data.shapes import write_shapes

    start = time.perf_counter()
    root = write_shapes(
        args.root, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed,
        workers=args.workers, progress=not args.quiet,
    )
    print(f"Shapes set ready at {root} ({args.num_train} train + {args.num_val} val images of {args.image_size} px, "
          f"seed {args.seed}) in {time.perf_counter() - start:.1f} s")


def summarise(dataset: ImageDataset, examples: int = 3) -> str:
    """A few lines on what a dataset holds: counts, the most frequent categories and example captions."""
    lines = [dataset.describe()]
    counts = collections.Counter(int(label) for record in dataset.records for label in record.labels)
    if counts:
        top = ", ".join(f"{dataset.categories[k]} ({n})" for k, n in counts.most_common(8))
        lines.append(f"  most frequent categories: {top}")
        per_image = [len(r.labels) for r in dataset.records]
        lines.append(f"  boxes per image: min {min(per_image)}, mean {sum(per_image) / len(per_image):.2f}, "
                     f"max {max(per_image)}")
    captioned = [r for r in dataset.records if r.captions][:examples]
    for record in captioned:
        lines.append(f"  {record.key}: {record.captions[0]!r}")
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> None:
    default_splits = {"shapes": ["train", "val"], "coco": ["val"]}
    for split in [args.split] if args.split else default_splits.get(args.dataset, [None]):
        kwargs = {"root": args.root} | ({"split": split} if split else {})
        dataset = load_dataset(args.dataset, **kwargs)
        where = getattr(dataset, "root", None)
        print(f"[{args.dataset}{'/' + split if split else ''}] at {where}")
        print(summarise(dataset))
        if args.bank:
            start = time.perf_counter()
            bank = ImageBank.from_dataset(dataset, canvas_size=args.canvas_size, device=args.device)
            megabytes = bank.images.numel() / 2**20
            print(f"  {bank!r}: {megabytes:.0f} MiB of pixels, decoded in {time.perf_counter() - start:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m view_env.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-shapes", help="generate a Shapes set in the COCO layout")
    make.add_argument("--root", required=True, help="folder to write (must not hold another set)")
    make.add_argument("--num-train", type=int, default=10000)
    make.add_argument("--num-val", type=int, default=1000)
    make.add_argument("--image-size", type=int, default=128)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.set_defaults(func=_make_shapes)

    info = commands.add_parser("info", help="summarise a dataset (preparing the Shapes set if needed)")
    info.add_argument("dataset", choices=sorted(DATASETS))
    info.add_argument("--root", default=None, help="dataset root (default: its environment variable or cache)")
    info.add_argument("--split", default=None, help="train or val (COCO and Shapes)")
    info.add_argument("--bank", action="store_true", help="also decode it into an image bank")
    info.add_argument("--canvas-size", type=int, default=128)
    info.add_argument("--device", default="cpu")
    info.set_defaults(func=_info)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (DatasetNotFoundError, DatasetFormatError, FileExistsError, ValueError, TypeError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
