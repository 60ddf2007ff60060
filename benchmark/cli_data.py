"""``bench data prepare DATASET SRC --out DIR``: the command line of :mod:`inversion_bench.data.prepare_sources`."""

from __future__ import annotations

import argparse
from pathlib import Path

from inversion_bench.errors import ConfigError


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Prepares one dataset; input problems raise ConfigError (exit 2) before any file is written."""
    from inversion_bench.data.prepare_sources import prepare

    src = Path(args.src).expanduser()
    if not src.exists():
        raise ConfigError(f"bench data prepare {args.dataset}: source {src} does not exist; give the folder you "
                          "downloaded and unpacked")
    for line in prepare(args.dataset, src, Path(args.out).expanduser(), partial=args.partial,
                        all_images=args.all, split=args.split, progress=False if args.no_progress else None,
                        crop=args.crop):
        print(line)
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """Registers ``bench data prepare``."""
    p = sub.add_parser("data", help="prepare downloaded datasets for the suites")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    q = data_sub.add_parser(
        "prepare", help="turn a downloaded dataset into the layout the suites read (resumable)",
        description="celeba: img_align_celeba/ + identity_CelebA.txt -> DIR/img_align_celeba_64/ (KED-MI's 64 px "
        "crop of the published split's images) and DIR/identity_CelebA.txt; celeba --crop ppa-hd: img_celeba/ (in the "
        "wild) + identity_CelebA.txt + HD-CelebA-Cropper's landmark.txt and standard_landmark_68pts.txt (or its "
        "annotations.zip) -> "
        "DIR/img_align_celeba/*.png (PPA's 224 px HD crop of the 1,000 identities with the most images); "
        "ffhq: thumbnails128x128/ -> DIR/ffhq64/; facescrub: actors/faces, actresses/faces -> DIR/actors/faces, "
        "DIR/actresses/faces. "
        "Outputs already there and valid are skipped; every missing or extra source file is named, exit 2.")
    q.add_argument("dataset", choices=["celeba", "facescrub", "ffhq"])
    q.add_argument("src", metavar="SRC", help="the downloaded (unpacked) dataset folder")
    q.add_argument("--out", required=True, metavar="DIR", help="folder to write (the suite's dataset root)")
    q.add_argument("--partial", action="store_true",
                   help="accept a subset of the dataset (a scaled-down run): missing files are not errors")
    q.add_argument("--all", action="store_true", help="celeba: crop every image, not only the split's (kedmi64) or the "
                   "1,000 identities' (ppa-hd)")
    q.add_argument("--split", default="kedmi-celeba", help="celeba: the published split (default kedmi-celeba)")
    q.add_argument("--crop", choices=["kedmi64", "ppa-hd"], default="kedmi64",
                   help="celeba: kedmi64 (the 64 px protocol, from img_align_celeba) or ppa-hd (PPA's 224 px "
                   "HD-CelebA crop, from img_celeba and the cropper's landmarks)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_data_prepare)
