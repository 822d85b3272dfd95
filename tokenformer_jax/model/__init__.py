"""The model: Pattention (tokens attending to parameter tokens), the attention kernels, the TokenFormer
decoder and the dense Transformer baseline it is compared with, and their FLOP counts.

Everything here is a pure function of a config and parameters: no mesh, no files, no training state.
"""
