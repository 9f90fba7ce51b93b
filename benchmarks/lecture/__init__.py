"""The lecture study: GradICON, cascade, TransMorph and probabilistic VoxelMorph against brain2d at one CPU budget."""
