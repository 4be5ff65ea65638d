"""peaknet_serve.sim.peaksim: a physically grounded simulator of serial-crystallography (SFX) detector frames.

Modules, one concern each:

* :mod:`peaknet_serve.sim.peaksim.geometry`    detector geometries (panels, pixel size, layout in the lab frame)
* :mod:`peaknet_serve.sim.peaksim.lattice`     unit cells, orientations, reciprocal lattices
* :mod:`peaknet_serve.sim.peaksim.diffraction` reflections on the Ewald sphere, partiality, Wilson intensities
* :mod:`peaknet_serve.sim.peaksim.spots`       pixel-integrated Gaussian spot profiles
* :mod:`peaknet_serve.sim.peaksim.background`  water ring, air scatter, constant
* :mod:`peaknet_serve.sim.peaksim.detector`    Poisson noise, gain, read noise, bad pixels, uint16 conversion
* :mod:`peaknet_serve.sim.peaksim.artefacts`   optional jet streak, beamstop support arm, common-mode offsets (off by default)
* :mod:`peaknet_serve.sim.peaksim.truth`       strong/weak peak labels and the segmentation mask
* :mod:`peaknet_serve.sim.peaksim.frame`       one frame end to end (parameters sampled from wide ranges)
* :mod:`peaknet_serve.sim.peaksim.cxi`         CXI-layout HDF5 writer/reader
* :mod:`peaknet_serve.sim.peaksim.matching`    one-to-one peak matching, precision/recall/F1

Pixel convention everywhere: pixel ``(ss, fs)`` covers ``[ss - 0.5, ss + 0.5) x [fs - 0.5, fs + 0.5)``,
so a peak position is a continuous (ss, fs) with pixel centres at integers.
"""
