"""The torch side: the networks, training, checkpoints, distributed runs, export to ONNX and evaluation.

Needs the `train` extra (`pip install "animevae[train]"`). Nothing outside this package imports torch.
"""
