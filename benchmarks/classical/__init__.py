"""Classical registration: FFD, dense, MI and affine (bench_optimize), 3D against
ANTs/SimpleITK/FireANTs (bench_dense3d), instance optimisation (bench_instance)."""
