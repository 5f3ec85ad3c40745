"""Optional fused GPU kernels of msclip (Triton), installed as ``msclip.cuda``."""
