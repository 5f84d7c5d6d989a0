"""genrec.nn: shared blocks (attention kernels and their plain references, relative bias, losses)."""
