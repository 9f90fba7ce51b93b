"""Speed and memory: core kernels and VxmDense against the FLOP floor and against MONAI and
voxelmorph; training defaults; cohort throughput."""
