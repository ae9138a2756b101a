"""`python -m captioning train`: train a captioner (thin: the work is in captioning.training)."""
import math
import os
import sys

from nn import backend
from nn.persist import atomic_write, remove_stale_temporaries

from ..cli import UsageError, check_decoding_options, check_outputs

HELP = "train a captioning model (default: the built-in synthetic shapes set, ~2 minutes on a CPU)"
DESCRIPTION = """\
Train a captioner: Show, Attend and Tell (soft attention, the default), Show
and Tell, LRCN (two LSTMs, the image fed to the upper one at every step), or
any other model of the registry (--model).

Without --data it trains on the built-in synthetic shapes set: 64x64 images of
coloured shapes, a small CNN trained end to end with the attention decoder.
It stops after 3 epochs or 2 minutes (--max-minutes), whichever comes first,
then captions four test images it has never seen and writes them as
sample_<k>.png for `caption`. On the idle 2-core CPU the 3 epochs take 80 s
and give test BLEU-4 95.3 with beam 3 (the learning rate falls linearly to a
tenth over the epochs: --lr-decay-to).

With --data DIR (Flickr8k, any layout) it trains on cached EfficientNet-Lite0
features (the CNN stays frozen). Extract them ONCE first (resumable; about
5 minutes for the 8091 photos on an idle 2-core CPU, longer on a busy one):
    python -m captioning features --data DIR
(the cache goes to outputs/features/flickr8k_efficientnet_lite0 unless you
give --out there and --features here).

For a quick real run, `features --max-images N` encodes only the first N
photos of each split, and `train --data DIR --max-images N` finds that cache.

Measured (attention model, defaults, `--epochs 10 --beam 3 --max-minutes 95`
on a 2-core CPU shared with other jobs): dev BLEU-4 best at epoch 6 (57
minutes); that checkpoint scores BLEU-1..4 63.4 / 45.5 / 31.7 / 21.7,
CIDEr-D 52.3 on the 1000 test images with beam 3. The shipped captioner
(BLEU-4 24.2, CIDEr-D 62.0) is --fine-tune-blocks 1 for 4 epochs, then
--scst from it (README, "The shipped captioner").

Fine-tuning (--fine-tune-blocks K, with --data): the last K blocks of
EfficientNet-Lite0 and its 1x1 head train with the decoder, from the
pretrained weights, at their own learning rate (--encoder-lr, default a tenth
of --lr; every schedule scales both together). Batchnorm stays in inference
mode, folded into the convolutions (batch statistics of a few dozen photos
would be noisy, and the ImageNet ones are what the weights expect). The
activations entering block 16-K are computed once into a cache, made first by
    python -m captioning features --data DIR --fine-tune-blocks K
so a step runs only the trainable top forward and backward. No data
augmentation: the cache holds one view per photo. The checkpoints hold the
fine-tuned top (encoder/*): evaluate reads the split's activation cache,
caption runs the whole network with the fine-tuned top.

Output (--out, default outputs/<data>_<model>): best.npz (best dev BLEU-4),
last.npz (latest state; --resume continues from it exactly), curves.png (training and dev loss, dev BLEU-4 per epoch).
Ctrl-C stops after the current step and saves last.npz.

Self-critical training (--scst --init CKPT, captioning.scst): starting from
a cross-entropy checkpoint, the model samples captions of the training
images and is pushed towards those whose CIDEr-D beats its own greedy
caption's (REINFORCE with the greedy reward as baseline). It optimises the
test-time metric directly: expect dev CIDEr-D up, BLEU-4 about the same
(Flickr8k, from the fine-tuned checkpoint, 112 minutes: test CIDEr-D 55.6 ->
62.0, BLEU-4 22.7 -> 24.2).
Its output goes to --out, default outputs/<data>_<model>_scst.

examples:
  python -m captioning train
  python -m captioning train --scst --init outputs/shapes_attention/best.npz --out outputs/shapes_scst
  python -m captioning train --data ../shared/flickr8k --epochs 10 --beam 3 --max-minutes 95
  python -m captioning train --data ../shared/flickr8k --scst --init outputs/flickr8k_attention/best.npz \\
      --out outputs/flickr8k_scst --max-minutes 120
  python -m captioning features --max-images 300 && python -m captioning train --data ../shared/flickr8k --max-images 300
  python -m captioning train --data ../shared/flickr8k --resume
  python -m captioning features --fine-tune-blocks 1 && python -m captioning train --data ../shared/flickr8k \\
      --fine-tune-blocks 1 --encoder-lr 1e-4 --out outputs/flickr8k_attention_ft1
"""

# What a run writes into --out (see captioning.training.Trainer).
RUN_FILES = ("best.npz", "last.npz", "curves.png")
# A model of more parameter values is refused before anything is allocated: with Adam's two
# moments and the gradients, 200 M float32 values already take 3.2 GB.
MAX_PARAMETERS = 200_000_000

# model config key -> the option that sets it (a model lists the keys it uses in `config_keys`)
MODEL_OPTIONS = {"wordvec_dim": "embed", "hidden_dim": "hidden", "attention_dim": "attention_dim",
                 "dropout": "dropout", "doubly_stochastic": "alpha_reg"}


def add_arguments(parser):
    from ..models import MODELS

    parser.add_argument("--data", default=None,
                        help="a photo folder: Flickr8k (any layout), Flickr30k or COCO (Karpathy's split "
                             "file and images); default: the built-in synthetic shapes set")
    parser.add_argument("--features", default=None,
                        help="feature cache of --data (default outputs/features/<name>_efficientnet_lite0, "
                             "<name> flickr8k, flickr30k or coco)")
    parser.add_argument("--model", choices=sorted(MODELS), default=None,
                        help="; ".join(f"{name}: {cls.title}" for name, cls in sorted(MODELS.items()))
                        + " (default attention)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 3 shapes, 10 Flickr8k)")
    parser.add_argument("--batch-size", type=int, default=None, help="captions per step (default 16/64)")
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam learning rate (default 3e-3 / 1e-3; with --scst 2e-4 / 5e-5)")
    parser.add_argument("--fine-tune-blocks", type=int, default=0, metavar="K",
                        help="with --data: train the last K blocks (1..16) of EfficientNet-Lite0 and its head "
                             "with the decoder, from the cache of `features --fine-tune-blocks K` (default 0: "
                             "frozen)")
    parser.add_argument("--encoder-lr", type=float, default=None,
                        help="learning rate of a trainable encoder (default: --lr / 10 when fine-tuning, "
                             "--lr for the shapes CNN)")
    parser.add_argument("--lr-decay-to", type=float, default=None,
                        help="below 1: the learning rate falls linearly, step by step, to lr times this at "
                             "the last step (then no decay on plateau); 1 = constant, halved when dev "
                             "BLEU-4 stalls (default 0.1 shapes / 1 Flickr8k)")
    parser.add_argument("--hidden", type=int, default=None, help="LSTM size (default 128 / 512)")
    parser.add_argument("--embed", type=int, default=None, help="word-vector size (default 64 / 256)")
    parser.add_argument("--attention-dim", type=int, default=None, help="attention size (default 64 / 256)")
    parser.add_argument("--dropout", type=float, default=None, help="drop probability before the output layer")
    parser.add_argument("--alpha-reg", type=float, default=None,
                        help="lambda of the doubly stochastic attention regulariser (default 0.01 / 1.0)")
    parser.add_argument("--clip", type=float, default=5.0, help="global gradient-norm clip (default 5)")
    parser.add_argument("--beam", type=int, default=None,
                        help="beam size for validation decoding, 1 = greedy (default 3 shapes / 1 Flickr8k)")
    parser.add_argument("--patience", type=int, default=4, help="early stopping patience in epochs (default 4)")
    parser.add_argument("--val-images", type=int, default=None,
                        help="decode only this many dev images per epoch (default all)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="use only the first N images of each split (quick runs, tests)")
    parser.add_argument("--min-count", type=int, default=None,
                        help="vocabulary: keep words seen this often in train (default 5; shapes 1)")
    parser.add_argument("--shapes-train", type=int, default=None,
                        help="synthetic set only: number of training images (default 2000)")
    parser.add_argument("--out", default=None, help="output folder (default outputs/<data>_<model>)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.npz exactly")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this many minutes of training, counted over resumed sessions too "
                             "(validated and checkpointed); default 2 for the synthetic set, none for "
                             "Flickr8k; 0 = no limit")
    parser.add_argument("--length-buckets", type=int, default=0,
                        help="batches of similar caption length, sorted in windows of this many batches: "
                             "on Flickr8k 20 cuts the LSTM steps per batch from 20.7 to 12.2, but on the "
                             "synthetic set it slowed learning a lot (dev BLEU-4 52 vs 83 after one epoch); "
                             "default 0 = off")
    parser.add_argument("--features-on-device", action="store_true",
                        help="with --backend cupy and a feature cache: copy the training features to the GPU "
                             "once instead of each batch (needs them to fit in half the free GPU memory; "
                             "not yet measured on a GPU, so off by default)")
    parser.add_argument("--quiet", action="store_true", help="only the per-epoch lines")
    scst = parser.add_argument_group(
        "self-critical training (Rennie et al. 2017), after cross-entropy training",
        "REINFORCE on the CIDEr-D of sampled captions (baseline: by default the\n"
        "greedy caption's CIDEr-D). The model, vocabulary and encoder come from\n"
        "--init (the encoder stays frozen). A step takes --batch-size IMAGES (default\n"
        "16 shapes / 50 Flickr8k); Adam at --lr 5e-5 by default as in the paper (2e-4\n"
        "on shapes), constant, halved when dev CIDEr-D stalls; --epochs 2 shapes / 10\n"
        "Flickr8k. best.npz is chosen, and --patience counts, by the dev CIDEr-D of\n"
        "greedy captions. --out defaults to outputs/<data>_<model>_scst.")
    scst.add_argument("--scst", action="store_true",
                      help="self-critical training from the cross-entropy checkpoint --init")
    scst.add_argument("--init", default=None, metavar="CKPT",
                      help="with --scst: the checkpoint to start from (e.g. best.npz of a `train` run)")
    scst.add_argument("--scst-samples", type=int, default=None, metavar="K",
                      help="captions sampled per image and step (default 1; 5 with --scst-baseline samples)")
    scst.add_argument("--scst-baseline", choices=("greedy", "samples"), default=None,
                      help="greedy: the reward of the greedy caption (Rennie et al., default); samples: the "
                           "mean reward of the image's other K - 1 samples ('new SCST')")


def _check_options(args, synthetic):
    """Refuse bad values before any work is done (not after an epoch, when saving fails)."""
    def flag(name):
        return "--" + name.replace("_", "-")
    for name in ("lr", "encoder_lr", "lr_decay_to", "clip", "dropout", "alpha_reg", "max_minutes"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise UsageError(f"{flag(name)} must be a finite number, got {value}")
    for name in ("epochs", "batch_size", "hidden", "embed", "attention_dim", "beam", "patience", "min_count",
                 "shapes_train", "val_images", "max_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"{flag(name)} must be >= 1, got {value}")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    for name in ("lr", "clip") + (("encoder_lr",) if args.encoder_lr is not None else ()):
        if getattr(args, name) <= 0:
            raise UsageError(f"{flag(name)} must be > 0, got {getattr(args, name)}")
    if not 0 < args.lr_decay_to <= 1:
        raise UsageError(f"--lr-decay-to must be in (0, 1], got {args.lr_decay_to}")
    for name in ("alpha_reg", "length_buckets", "max_minutes"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"{flag(name)} must be >= 0, got {value}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if synthetic and args.features:
        raise UsageError("--features needs --data: the built-in shapes set has no feature cache")
    _check_fine_tuning(args, synthetic)


def _check_fine_tuning(args, synthetic):
    if not 0 <= args.fine_tune_blocks <= 16:
        raise UsageError(f"--fine-tune-blocks must be from 0 to 16 (EfficientNet-Lite0 has 16 blocks), "
                         f"got {args.fine_tune_blocks}")
    if synthetic and args.fine_tune_blocks:
        raise UsageError("--fine-tune-blocks needs --data: the shapes set trains its own small CNN end to end")
    if args.encoder_lr is not None and not synthetic and not args.fine_tune_blocks:
        raise UsageError("--encoder-lr needs a trainable encoder: give --fine-tune-blocks K (the cached "
                         "EfficientNet-Lite0 features are frozen)")


def _defaults(args, dataset):
    """Options not given take the data set's defaults (small and quick for shapes, paper-sized for Flickr8k)."""
    if args.data is not None and args.shapes_train is not None:
        raise UsageError("--shapes-train is for the synthetic shapes set (no --data); "
                         "with --data use --max-images to train on fewer photos")
    for key, value in dataset.train_defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.fine_tune_blocks and args.encoder_lr is None and args.lr is not None:
        args.encoder_lr = args.lr / 10    # a pretrained network moves less than a new decoder
    if args.max_minutes == 0:      # "no limit"; a negative value is left for _check_options to refuse
        args.max_minutes = None


def _load_data(args, dataset, feature_kind):
    """The TrainingData of the chosen data set; refuses empty splits."""
    from ..data.datasets import DatasetError

    try:
        if args.data is None:
            data = dataset.load(n_train=args.shapes_train, seed=args.seed, max_images=args.max_images)
        else:
            data = dataset.load(args.data, args.features, max_images=args.max_images, kind=feature_kind,
                                fine_tune_blocks=args.fine_tune_blocks)
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    empty = [name for name, split in data.splits.items() if len(split) == 0]
    if empty:   # e.g. a folder of a few photos in the Kaggle layout, split 80/10/10
        raise UsageError(f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty in "
                         f"{data.describe()}: training needs images in train, dev (to pick the best "
                         "checkpoint) and test; use a larger data set")
    return data


def _output_folder(args, data, default=None, reads=()):
    """The run's folder: --out, else outputs/<default> (default <data>_<model>); refused when the run
    would write over a file it reads (the data's, or `reads`: (what, path) pairs)."""
    out = args.out or os.path.join("outputs", default or f"{data.name}_{args.model}")
    check_outputs([("--out", out)] + [("--out", os.path.join(out, name)) for name in RUN_FILES],
                  list(data.files_read()) + list(reads), data.spec.get("root"))
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file; give a folder for the run")
    if args.resume and not os.path.isfile(os.path.join(out, "last.npz")):   # before the Trainer makes `out`
        raise UsageError(f"--resume: no {os.path.join(out, 'last.npz')} to resume from (give the same --out)")
    return out


def _new_model(args, model_class, vocabulary, feature_dim):
    """A fresh model of the chosen kind: its own config keys come from their options."""
    from ..models import ConfigMismatchError, build

    config = {"model": args.model, "vocab_size": len(vocabulary), "feature_dim": feature_dim,
              **{key: getattr(args, MODEL_OPTIONS[key]) for key in model_class.config_keys},
              "null_id": vocabulary.null_id, "start_id": vocabulary.start_id, "end_id": vocabulary.end_id}
    try:
        return build(config, seed=args.seed, max_parameters=MAX_PARAMETERS)
    except ConfigMismatchError as exc:
        raise UsageError(f"{exc}: lower --hidden, --embed or --attention-dim") from None


def _make_trainer(args, data, out):
    """Vocabulary, encoder, model and the Trainer of this run (resumed with --resume)."""
    from ..data.text import SPECIAL_TOKENS, Vocabulary
    from ..encoders import new_encoder
    from ..models import MODELS
    from ..training import TrainConfig, Trainer

    vocabulary = Vocabulary.build(data.train_tokens(), min_count=args.min_count)
    if len(vocabulary) == len(SPECIAL_TOKENS):
        raise UsageError(f"--min-count {args.min_count}: no word of the training captions occurs that often, "
                         "so the vocabulary would hold only the special tokens; lower --min-count")
    check_decoding_options(args.beam, 1, vocab_size=len(vocabulary))
    encoder = new_encoder(data.encoder_spec)
    model_class = MODELS[args.model]
    model = _new_model(args, model_class, vocabulary, data.feature_dim or encoder.feature_dim(model_class.feature_kind))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, encoder_lr=args.encoder_lr,
                         lr_decay_to=args.lr_decay_to, clip=args.clip,
                         beam=args.beam, patience=args.patience, seed=args.seed,
                         max_minutes=args.max_minutes, val_images=args.val_images,
                         length_buckets=args.length_buckets, features_on_device=args.features_on_device)
    trainer = Trainer(model, vocabulary, encoder, data.splits["train"], data.splits["dev"], config, out,
                      log=_progress_log(args), data_spec=data.spec)
    _resume_or_note(trainer, args, out)
    return trainer


def _progress_log(args):
    """The trainers' log: every line, or with --quiet only the lines that are not per-step progress."""
    def log(line):
        if not args.quiet or not line.startswith("epoch ") or " done:" in line:
            print(line)
        sys.stdout.flush()
    return log


def _resume_or_note(trainer, args, out):
    """--resume: load last.npz and say where the run goes on; else warn when `out` already holds a run."""
    if args.resume:
        trainer.resume(trainer.last_path)
        p = trainer.progress
        print(f"resuming {trainer.last_path}: epoch {p.epoch + 1}, step {p.batch} of {trainer.steps_per_epoch}")
    elif os.path.isfile(trainer.last_path):
        print(f"note: {out} already holds a run; it will be overwritten (use --resume to continue it)")


def run(args):
    from ..data.datasets import DATASETS, DEFAULT_DATASET, folder_dataset
    from ..models import MODELS
    from ..training import TrainingDiverged

    if args.scst or args.init is not None:
        return _run_scst(args)
    for name in ("scst_samples", "scst_baseline"):
        if getattr(args, name) is not None:
            raise UsageError(f"--{name.replace('_', '-')} is an option of self-critical training: give --scst")
    args.model = args.model or "attention"
    synthetic = args.data is None
    dataset = DATASETS[DEFAULT_DATASET] if synthetic else folder_dataset(args.data)
    _defaults(args, dataset)
    _check_options(args, synthetic)
    data = _load_data(args, dataset, MODELS[args.model].feature_kind)
    out = _output_folder(args, data)
    trainer = _make_trainer(args, data, out)
    model, encoder = trainer.model, trainer.encoder
    print(f"data: {data.describe()}")
    print(f"model: {args.model}, {model.num_params():,} parameters, vocabulary {len(trainer.vocabulary)} words; "
          f"encoder: {_describe_encoder(args, encoder)}; "
          f"backend {backend.name()}")
    print(f"training: {len(trainer.table):,} captions, {trainer.steps_per_epoch} steps/epoch of "
          f"{args.batch_size}; output in {out}")
    try:
        history = trainer.fit()
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if trainer.interrupted:     # last.npz is saved; do not go on as if training had finished
        return 130
    if trainer.progress.best_epoch > 0:
        _report_best(args, trainer, history, data, out, synthetic)
    return 0


def _describe_encoder(args, encoder):
    """e.g. 'efficientnet_lite0 (frozen)', 'efficientnet_lite0_ft (last 1 blocks and head fine-tuned, ...)'."""
    if not encoder.trainable:
        return f"{encoder.spec['name']} (frozen)"
    lr = f", lr {args.encoder_lr:g}" if args.encoder_lr is not None else ""
    if args.fine_tune_blocks:
        k = args.fine_tune_blocks
        return f"{encoder.spec['name']} (last {k} block{'s' if k > 1 else ''} and head fine-tuned{lr}, batchnorm folded)"
    return f"{encoder.spec['name']} (trained end to end{lr})"


def _report_best(args, trainer, history, data, out, synthetic):
    best = max(history, key=lambda r: r["dev_bleu"][3])
    print(f"best dev BLEU-4 {100 * best['dev_bleu'][3]:.2f} (epoch {trainer.progress.best_epoch}) -> "
          f"{trainer.best_path}; curves: {os.path.join(out, 'curves.png')}")
    _show_samples(trainer.best_path, data, out, synthetic)
    print(f"next: python -m captioning evaluate --checkpoint {trainer.best_path}"
          f"{'' if synthetic else ' --data ' + args.data} --split test --beam 3")
    if synthetic:
        # `caption --attention-png` refuses a model without a feature grid to attend over
        png = " --attention-png attention.png" if trainer.model.feature_kind == "grid" else ""
        print(f"      python -m captioning caption {os.path.join(out, 'sample_*.png')} --checkpoint "
              f"{trainer.best_path}{png}")


def _show_samples(best_path, data, out, synthetic, count=4):
    """Caption a few TEST images (never seen in training) with the best checkpoint (beam 3).

    For the synthetic set the images are also written as out/sample_<k>.png,
    ready for `python -m captioning caption`.
    """
    from ..checkpoint import load_checkpoint
    from ..encoders import make_encoder
    from ..generation import generate_captions

    ckpt = load_checkpoint(best_path)
    encoder = make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype)
    test = data.splits["test"].head(count)
    captions, _ = generate_captions(ckpt.model, encoder, test, ckpt.vocabulary, beam=3)
    print("test images captioned by the best checkpoint (beam 3):")
    for k, (image_id, words, refs) in enumerate(zip(test.image_ids, captions, test.references)):
        name = image_id
        if synthetic:
            from PIL import Image
            name = os.path.join(out, f"sample_{k}.png")
            remove_stale_temporaries(name)
            with atomic_write(name, "wb") as f:
                Image.fromarray(test.inputs[k].transpose(1, 2, 0)).save(f, format="PNG")
        print(f"  {name}: {' '.join(words)}")
        print(f"  {' ' * len(name)}  (a reference: {' '.join(refs[0])})")


# Options of a cross-entropy run that self-critical training takes from its --init checkpoint
# (or does not use); given with --scst they are refused rather than silently ignored.
SCST_FROM_CHECKPOINT = ("model", "hidden", "embed", "attention_dim", "dropout", "alpha_reg", "min_count",
                        "encoder_lr", "beam")


def _run_scst(args):
    """`train --scst --init CKPT`: self-critical training (captioning.scst) from a cross-entropy checkpoint."""
    from ..checkpoint import load_checkpoint
    from ..data.datasets import DATASETS, DEFAULT_DATASET, folder_dataset
    from ..encoders import make_encoder
    from ..encoders.finetuned import fine_tune_blocks
    from ..scst import SCSTConfig, SelfCriticalTrainer, scst_defaults
    from ..training import TrainingDiverged

    if not args.scst:
        raise UsageError("--init is the starting checkpoint of self-critical training: give --scst too")
    if args.init is None:
        raise UsageError("--scst needs --init CKPT: the cross-entropy checkpoint to start from "
                         "(e.g. best.npz of a `python -m captioning train` run)")
    given = [name for name in SCST_FROM_CHECKPOINT if getattr(args, name) is not None]
    given += ["fine_tune_blocks"] if args.fine_tune_blocks else []
    given += ["length_buckets"] if args.length_buckets else []
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} does not go with --scst: the model, its vocabulary and "
                         "encoder come from the --init checkpoint, and dev captions are greedy")
    args.scst_baseline = args.scst_baseline or "greedy"
    if args.scst_samples is None:
        args.scst_samples = 5 if args.scst_baseline == "samples" else 1
    if args.scst_samples < 1 or (args.scst_baseline == "samples" and args.scst_samples < 2):
        raise UsageError(f"--scst-samples must be >= {2 if args.scst_baseline == 'samples' else 1}"
                         f"{' with --scst-baseline samples' if args.scst_baseline == 'samples' else ''}, "
                         f"got {args.scst_samples}")

    synthetic = args.data is None
    dataset = DATASETS[DEFAULT_DATASET] if synthetic else folder_dataset(args.data)
    try:
        ckpt = load_checkpoint(args.init)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--init: {exc}") from None
    trained_on = (ckpt.training.get("data") or {}).get("name")
    if trained_on != dataset.name:
        raise UsageError(f"--init {args.init} was trained on {trained_on or 'unknown data'}, but this run's data "
                         f"is {dataset.name}{'' if synthetic else ' (' + args.data + ')'}: give a checkpoint of "
                         f"the same data set")
    args.model = ckpt.model.name
    args.fine_tune_blocks = fine_tune_blocks(ckpt.encoder)    # its activation cache is the data's input
    for key, value in scst_defaults(dataset.name).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    _defaults(args, dataset)          # the options left (min_count, beam, ...) as a cross-entropy run has them
    _check_options(args, synthetic)
    data = _load_data(args, dataset, ckpt.model.feature_kind)
    if data.encoder_spec.get("name") != ckpt.encoder.get("name"):
        raise UsageError(f"--init {args.init} reads features of {ckpt.encoder.get('name')}, but the data gives "
                         f"{data.encoder_spec.get('name')}")
    # Not the cross-entropy run's folder (outputs/<data>_<model>), whose best.npz is usually --init.
    out = _output_folder(args, data, default=f"{data.name}_{args.model}_scst",
                         reads=[("the --init checkpoint", args.init)])
    model = ckpt.model
    encoder = make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=model.dtype)
    config = SCSTConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_decay_to=args.lr_decay_to,
                        clip=args.clip, beam=1, patience=args.patience, seed=args.seed, max_minutes=args.max_minutes,
                        val_images=args.val_images, samples=args.scst_samples, baseline=args.scst_baseline,
                        init=os.path.abspath(args.init), features_on_device=args.features_on_device)
    trainer = SelfCriticalTrainer(model, ckpt.vocabulary, encoder, data.splits["train"], data.splits["dev"],
                                  config, out, log=_progress_log(args), data_spec=data.spec)
    _resume_or_note(trainer, args, out)
    print(f"data: {data.describe()}")
    print(f"self-critical training of {args.init}: {args.model}, {model.num_params():,} parameters, vocabulary "
          f"{len(ckpt.vocabulary)} words; encoder {encoder.spec['name']} (frozen here); backend {backend.name()}")
    baseline = ("the greedy caption's CIDEr-D" if config.baseline == "greedy"
                else f"the mean CIDEr-D of the other {config.samples - 1} samples")
    print(f"training: {len(data.splits['train']):,} images, {trainer.steps_per_epoch} steps/epoch of "
          f"{config.batch_size} images x {config.samples} sample{'s' if config.samples > 1 else ''}, baseline "
          f"{baseline}, lr {config.lr:g}; output in {out}")
    try:
        history = trainer.fit()
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if trainer.interrupted:
        return 130
    start, best = history[0], max(history, key=lambda r: r["dev_cider"])
    print(f"dev CIDEr-D {100 * start['dev_cider']:.2f} at the start -> best {100 * best['dev_cider']:.2f} "
          f"(epoch {best['epoch']}) -> {trainer.best_path}; curves: {os.path.join(out, 'curves.png')}")
    print(f"next: python -m captioning evaluate --checkpoint {trainer.best_path}"
          f"{'' if synthetic else ' --data ' + args.data} --split test")
    return 0
