"""`python -m captioning COMMAND ...`: a thin dispatcher over captioning.commands.*."""
import argparse
import errno
import importlib
import math
import os
import pkgutil
import sys

from nn import backend

from . import commands


class UsageError(Exception):
    """Bad user input a command reports as one line on stderr (exit status 2)."""


# Errors of the file system, not of our code: no permission, a read-only disk, a full
# disk, a folder where a file should be (or the reverse).
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                       errno.EISDIR, errno.ENOTDIR, errno.EEXIST}


def _user_errors():
    """Exceptions that mean bad input (an option, a file, a checkpoint, an image), each with a
    message naming it: reported as one line on stderr, exit status 2, no traceback."""
    from nn.persist import NpzFormatError
    from .data.flickr8k import CaptionFileError
    from .data.images import ImageDecodeError
    from .features import FeatureCacheError
    from .models import ConfigMismatchError
    from .pth import CheckpointError
    return (UsageError, backend.BackendError, FileNotFoundError, NpzFormatError, ImageDecodeError, CaptionFileError,
            FeatureCacheError, ConfigMismatchError, CheckpointError)


def _is_user_error(exc):
    return isinstance(exc, _user_errors()) or (isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS)


def _file_keys(path):
    """What identifies the file `path` names: its real path (symlinks and ./ or ../ spellings
    resolved) and, when it exists, its device and inode (hard links)."""
    keys = [os.path.realpath(os.path.abspath(path))]
    try:
        stat = os.stat(path)
        keys.append((stat.st_dev, stat.st_ino))
    except OSError:     # it does not exist (yet)
        pass
    return keys


def check_outputs(outputs, reads=(), data_folder=None):
    """Never overwrite an input of the same run: the one guard every command runs on what it writes.

    Inputs:
    - outputs: (option, path) pairs, the files or folders the command will write, named as the
      user gave them, e.g. [("--out", "run/captions.json")]
    - reads: (what, path) pairs, the files the command reads, e.g. [("the checkpoint", ckpt)];
      a path of None is skipped
    - data_folder: the data set's folder, which is only read (None: no data folder)
    Raises UsageError when an output is one of the files read, is the data folder, or lies inside
    it, or is a device, pipe or socket (e.g. /dev/null, which a file would replace). Paths are
    compared as real paths (and inodes), so a symlink, a hard link or a `./x` spelling is caught too.
    """
    read = {key: (what, path) for what, path in reads if path is not None for key in _file_keys(path)}
    data = None if data_folder is None else os.path.realpath(os.path.abspath(data_folder))
    for option, path in outputs:
        if os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path)):
            raise UsageError(f"{option} {path} is a device, pipe or socket, not a file: give the name of a "
                             "file to write")
        keys = _file_keys(path)
        for key in keys:
            if key in read:
                what, original = read[key]
                raise UsageError(f"{option} {path} would overwrite {what} {original}, which this command "
                                 "reads: write somewhere else")
        if data is not None and keys[0] == data:
            raise UsageError(f"{option} {path} is the data folder {data_folder}, which is only read: "
                             "write somewhere else")
        if data is not None and keys[0].startswith(data + os.sep):
            raise UsageError(f"{option} {path} lies inside the data folder {data_folder}, which is only read: "
                             "write somewhere else")


# Above this a length normalisation ranks by length alone (and length ** alpha overflows).
MAX_LENGTH_ALPHA = 10.0


NO_REPEAT_NGRAM_HELP = (
    "never complete an N-gram the caption already contains (its words get probability 0 at each "
    "step of greedy decoding and beam search); 3 is the `block_trigrams` of self-critical.pytorch "
    "(Paulus et al. 2017, Hugging Face's no_repeat_ngram_size). Stops SCST models' \"on a dock on a "
    "dock\". Default 0: off")


def add_no_repeat_ngram_argument(parser):
    """--no-repeat-ngram N (captioning.decoding's no_repeat_ngram), shared by evaluate and caption."""
    parser.add_argument("--no-repeat-ngram", type=int, default=0, metavar="N", help=NO_REPEAT_NGRAM_HELP)


BLOCK_BAD_ENDINGS_HELP = (
    "never end a caption right after a, an, the, in, on, of, with, to, is, are ... (<END> gets "
    "probability 0 after them, in greedy decoding and beam search; a caption may still be cut by "
    "--max-length). Stops SCST models' dangling endings (\"a woman is sitting in front of a\"); the "
    "`remove_bad_endings` of self-critical.pytorch. Default: off")


def add_block_bad_endings_argument(parser):
    """--block-bad-endings (captioning.decoding's bad_ending_ids, the words of
    captioning.generation.BAD_ENDINGS), shared by evaluate and caption."""
    parser.add_argument("--block-bad-endings", action="store_true", help=BLOCK_BAD_ENDINGS_HELP)


def check_decoding_options(beam, max_length, length_alpha=0.0, vocab_size=None, no_repeat_ngram=0):
    """Refuse decoding settings before any work: --beam and --max-length >= 1, --length-alpha in
    [0, MAX_LENGTH_ALPHA], --no-repeat-ngram >= 0, and (once the vocabulary is known) no more beams
    than words, since a beam keeps distinct words after its first step and only allocates the rest."""
    for option, value in (("--beam", beam), ("--max-length", max_length)):
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    if no_repeat_ngram < 0:
        raise UsageError(f"--no-repeat-ngram must be >= 0 (0 = off), got {no_repeat_ngram}")
    if not (math.isfinite(length_alpha) and 0 <= length_alpha <= MAX_LENGTH_ALPHA):
        raise UsageError(f"--length-alpha must be a number in [0, {MAX_LENGTH_ALPHA:g}], got {length_alpha}")
    if vocab_size is not None and beam > vocab_size:
        raise UsageError(f"--beam {beam} is more than the {vocab_size} words of the vocabulary; "
                         "beams of 3 to 5 are usual")


def check_output_file(path, option):
    """Fail before the work, not after it, when `path` (given with `option`) cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a folder; give a file name inside it")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: folder {folder} is not writable")


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


def _never_fail_to_print():
    """Print any text, whatever the terminal's encoding: a character it cannot show (a file name
    that is not UTF-8, Chinese on an ASCII terminal) comes out as a backslash escape instead of a
    UnicodeEncodeError that would stop the command."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):    # not a TextIOWrapper (replaced, or closed)
            pass


def _refuse_empty_strings(args):
    """An empty file or folder name (--out "") would quietly mean "the default"; say so instead."""
    for name, value in vars(args).items():
        if isinstance(value, list) and "" in value:
            raise UsageError(f"one of the {name} given is an empty name")
        if value == "":
            raise UsageError(f"--{name.replace('_', '-')} is empty: give a name, or leave the option out "
                             "for its default")


def _reader_went_away():
    """stdout was a pipe whose reader closed it (`... | head -1`): stop quietly, as Unix tools do,
    with the status a SIGPIPE death gives (128 + 13). Python would print a second BrokenPipeError
    when it flushes stdout at exit, so stdout now points at /dev/null."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):       # stdout has no file descriptor (replaced, e.g. in tests)
        pass
    return 141


def main(argv=None):
    _never_fail_to_print()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _refuse_empty_strings(args)
        if args.backend:
            backend.use(args.backend)
        return int(args._run(args) or 0)
    except BrokenPipeError:
        return _reader_went_away()
    except Exception as exc:
        if not _is_user_error(exc):
            raise                       # a bug: keep the traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
