; rayonix: 1 panel(s) of 1920 x 1920 pixels
; Slab layout: panel k is rows k*1920 .. k*1920+1919 of /entry_1/data_1/data (N, 1920, 1920).
; Peak lists put pixel centres at integer coordinates: keep indexamajig's half-pixel shift.
; Written by peaknet-geometry.

photon_energy = 9500 eV
bandwidth = 0.003
clen = 0.2 m
coffset = 0.0
res = 5647.165123
adu_per_photon = 13.44

data = /entry_1/data_1/data
dim0 = %
dim1 = ss
dim2 = fs
mask0_data = /entry_1/data_1/mask
mask0_goodbits = 0x1
mask0_badbits = 0x0
peak_list = /entry_1/result_1
peak_list_type = cxi

p0/min_fs = 0
p0/max_fs = 1919
p0/min_ss = 0
p0/max_ss = 1919
p0/fs = +1.000000x +0.000000y
p0/ss = +0.000000x +1.000000y
p0/corner_x = -960.0000
p0/corner_y = -960.0000
