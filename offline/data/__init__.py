"""Data sets: the bundled generators and the `.npz` tensor-set format."""
