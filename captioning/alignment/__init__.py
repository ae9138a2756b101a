"""Deep Visual-Semantic Alignments (Karpathy & Fei-Fei 2015): image regions and sentence words
in one space, image-sentence retrieval, and each word's best region.

- model.py: the alignment model (regions -> v_i, a bidirectional RNN over words -> s_t, the
  fragment score and the ranking loss), forward and backward by hand;
- data.py: images and sentences as arrays (features or pixels, word ids and masks);
- retrieval.py: score matrices, Recall@K and median rank in both directions;
- training.py: the training loop (resume, early stopping on dev recall);
- checkpoint.py: the aligner's .npz checkpoints;
- regions.py: each word's best region, and the shapes set's word-on-shape measure;
- figure.py: the annotate picture (regions and their words);
- app.py: what the `align` subcommands do, as functions.
"""
