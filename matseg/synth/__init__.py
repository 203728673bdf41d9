"""Synthetic 3-phase cathode volumes (FIB-SEM of an NMC cathode) with exact ground truth.

The microstructure is a Boolean model of polydisperse overlapping spheres (disks in 2-D) for
the active particles, a carbon-binder (CBD) film of varying thickness on their surfaces plus
free CBD blobs, and pore elsewhere.  The image model adds pore shine-through, blur, shading,
curtaining and noise, all of which get worse inside smooth "hard" blobs of the volume.

Everything is a function of the seed and of global voxel coordinates: germs are drawn per
fixed spatial cell, noise per fixed tile, and operations with spatial extent run on the region
grown by a halo.  A region therefore renders identically alone or cropped from a larger render.
"""

from matseg.synth.config import PHASES, PROFILES, SampleConfig, imaging_parameters
from matseg.synth.render import render_region, sample_arrays

__all__ = ["PHASES", "PROFILES", "SampleConfig", "imaging_parameters", "render_region", "sample_arrays"]
