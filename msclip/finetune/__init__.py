"""``python -m msclip.finetune``: runs ``msclip-finetune`` (:mod:`msclip.cli.finetune`).

The library of probes and fine-tuning is :mod:`msclip.heads` (:mod:`msclip.heads.finetune`).
"""
