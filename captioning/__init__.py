"""captioning: neural image captioning built on the hand-written `nn` layers.

Data (Flickr8k and a synthetic shapes world), a pretrained EfficientNet-Lite0
encoder running in `nn` conv layers, Show-and-Tell and Show-Attend-and-Tell
decoders, training, batched beam search, BLEU/CIDEr, attention pictures, and
the command line `python -m captioning ...`.
"""
