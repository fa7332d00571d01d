"""Check a checkpoint against a model before a run: ``python -m kit.models inspect CKPT --model NAME``.

::

    python -m kit.models list
    python -m kit.models inspect checkpoints/uniformer_base_k600_32x4.pth --model uniformer_b --num-classes 11

``inspect`` builds the model and loads the checkpoint exactly as a run would
(:func:`kit.models.load_pretrained`), then prints what was loaded, dropped, inflated or converted;
a wrong or partial checkpoint fails here, naming its keys, instead of hours into training.
"""

from __future__ import annotations

import argparse
import sys

from kit.config import parse_override

from . import PretrainedError, create_model, list_models, load_pretrained


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kit.models", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered model names")
    ins = sub.add_parser("inspect", help="load a checkpoint into a model and report")
    ins.add_argument("checkpoint")
    ins.add_argument("--model", required=True, help="registered name, e.g. uniformer_b")
    ins.add_argument("--num-classes", type=int, default=11)
    ins.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="create_model override, e.g. --set std=true")
    args = ap.parse_args(argv)
    if args.command == "list":
        print("\n".join(list_models()))
        return 0
    overrides = {}
    for text in args.overrides:
        keys, value = parse_override(text)
        overrides[".".join(keys)] = value
    model = create_model(args.model, num_classes=args.num_classes, **overrides)
    try:
        report = load_pretrained(model, args.checkpoint)
    except (PretrainedError, FileNotFoundError) as exc:
        print(f"{args.checkpoint} does not load into {args.model}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.checkpoint} -> {args.model} ({args.num_classes} classes): {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
