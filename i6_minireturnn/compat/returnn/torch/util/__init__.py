"""``returnn.torch.util``: Mini-RETURNN's package holds only ``diagnose_gpu``.

RETURNN's mainline modules of the same package (``gradient_checkpoint``, ``module``, ``array_``, ...) are not here:
importing one of them fails with the list of what this runtime provides.
"""
