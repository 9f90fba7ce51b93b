"""The OASIS study (MSE vs NCC, the lambda sweep, morphreg next to ANTs, voxelmorph and MONAI)
and the OASIS 2D acceptance runs."""
