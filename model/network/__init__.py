"""The network: backbones, the deformable-attention pixel decoder, the masked-attention decoder with one
query group per continual step, class and mask heads, logit manipulation and the panoptic merge.

Imports nothing else from `model` (no training, evaluation or file code), so it reads on its own.
"""
