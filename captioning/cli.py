"""`python -m captioning COMMAND ...`: a thin dispatcher over captioning.commands.*."""
import argparse
import importlib
import pkgutil
import sys

from nn import backend

from . import commands


class UsageError(Exception):
    """Bad user input a command reports as one line on stderr (exit status 2)."""


def _user_errors():
    """Exceptions that mean bad input (an option, a file, a checkpoint, an image), each with a
    message naming it: reported as one line on stderr, exit status 2, no traceback."""
    from nn.persist import NpzFormatError
    from .data.images import ImageDecodeError
    from .features import FeatureCacheError
    from .models import ConfigMismatchError
    from .pth import CheckpointError
    return (UsageError, backend.BackendError, FileNotFoundError, NpzFormatError, ImageDecodeError,
            FeatureCacheError, ConfigMismatchError, CheckpointError)


def _command_modules():
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    return [(name.replace("_", "-"), importlib.import_module(f"{commands.__name__}.{name}")) for name in names]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m captioning",
        description="Neural image captioning built by hand on NumPy/CuPy. "
                    "Run `python -m captioning COMMAND --help` for each command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--backend", choices=["numpy", "cupy"], default=None,
                       help="array backend: numpy (CPU) or cupy (NVIDIA GPU); default $NN_BACKEND or numpy")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.backend:
            backend.use(args.backend)
        return int(args._run(args) or 0)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise                       # a bug: keep the traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
