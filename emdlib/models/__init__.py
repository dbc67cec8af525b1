"""Models: the FER stream (ESR, SimFER, Grad-CAM) and the manipulation stream (EMD and its variants)."""
