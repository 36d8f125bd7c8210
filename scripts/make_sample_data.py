"""Write the toy world's sample subject and style under data/01_raw (see ziplora_pipeline/sample_data.py)."""

import argparse
import logging

from ziplora_pipeline.core.toy_world.render import CLASSES, STYLES
from ziplora_pipeline.sample_data import write_grid_sample_data, write_sample_data

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data/01_raw")
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--style", default="sketch", choices=STYLES)
    parser.add_argument("--style-noun", default="house", choices=CLASSES)
    parser.add_argument("--grid", action="store_true", help="also the 3 x 3 grid's subjects and styles (conf/grid)")
    args = parser.parse_args()
    write_sample_data(args.root, args.views, args.size, style=args.style, style_noun=args.style_noun)
    if args.grid:
        write_grid_sample_data(args.root, args.views, args.size)
