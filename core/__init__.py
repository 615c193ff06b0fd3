"""The detector contract shared by every stage: metadata, preprocessing, the FFT stage, outputs.

Framework-light on purpose (numpy + pillow): the client and the Triton preprocessing model import it, and it
never imports torch.
"""
