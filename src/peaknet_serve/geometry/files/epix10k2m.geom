; epix10k2m: 16 panel(s) of 352 x 384 pixels
; Slab layout: panel k is rows k*352 .. k*352+351 of /entry_1/data_1/data (N, 5632, 384).
; Peak lists put pixel centres at integer coordinates: keep indexamajig's half-pixel shift.
; Written by peaknet-geometry.

photon_energy = 9500 eV
bandwidth = 0.003
clen = 0.19 m
coffset = 0.0
res = 10000.000000
adu_per_photon = 27.7

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
p0/max_fs = 383
p0/min_ss = 0
p0/max_ss = 351
p0/fs = +1.000000x +0.000000y
p0/ss = +0.000000x +1.000000y
p0/corner_x = -798.0000
p0/corner_y = -734.0000

p1/min_fs = 0
p1/max_fs = 383
p1/min_ss = 352
p1/max_ss = 703
p1/fs = +1.000000x +0.000000y
p1/ss = +0.000000x +1.000000y
p1/corner_x = -394.0000
p1/corner_y = -734.0000

p2/min_fs = 0
p2/max_fs = 383
p2/min_ss = 704
p2/max_ss = 1055
p2/fs = +1.000000x +0.000000y
p2/ss = +0.000000x +1.000000y
p2/corner_x = 10.0000
p2/corner_y = -734.0000

p3/min_fs = 0
p3/max_fs = 383
p3/min_ss = 1056
p3/max_ss = 1407
p3/fs = +1.000000x +0.000000y
p3/ss = +0.000000x +1.000000y
p3/corner_x = 414.0000
p3/corner_y = -734.0000

p4/min_fs = 0
p4/max_fs = 383
p4/min_ss = 1408
p4/max_ss = 1759
p4/fs = +1.000000x +0.000000y
p4/ss = +0.000000x +1.000000y
p4/corner_x = -798.0000
p4/corner_y = -362.0000

p5/min_fs = 0
p5/max_fs = 383
p5/min_ss = 1760
p5/max_ss = 2111
p5/fs = +1.000000x +0.000000y
p5/ss = +0.000000x +1.000000y
p5/corner_x = -394.0000
p5/corner_y = -362.0000

p6/min_fs = 0
p6/max_fs = 383
p6/min_ss = 2112
p6/max_ss = 2463
p6/fs = +1.000000x +0.000000y
p6/ss = +0.000000x +1.000000y
p6/corner_x = 10.0000
p6/corner_y = -362.0000

p7/min_fs = 0
p7/max_fs = 383
p7/min_ss = 2464
p7/max_ss = 2815
p7/fs = +1.000000x +0.000000y
p7/ss = +0.000000x +1.000000y
p7/corner_x = 414.0000
p7/corner_y = -362.0000

p8/min_fs = 0
p8/max_fs = 383
p8/min_ss = 2816
p8/max_ss = 3167
p8/fs = +1.000000x +0.000000y
p8/ss = +0.000000x +1.000000y
p8/corner_x = -798.0000
p8/corner_y = 10.0000

p9/min_fs = 0
p9/max_fs = 383
p9/min_ss = 3168
p9/max_ss = 3519
p9/fs = +1.000000x +0.000000y
p9/ss = +0.000000x +1.000000y
p9/corner_x = -394.0000
p9/corner_y = 10.0000

p10/min_fs = 0
p10/max_fs = 383
p10/min_ss = 3520
p10/max_ss = 3871
p10/fs = +1.000000x +0.000000y
p10/ss = +0.000000x +1.000000y
p10/corner_x = 10.0000
p10/corner_y = 10.0000

p11/min_fs = 0
p11/max_fs = 383
p11/min_ss = 3872
p11/max_ss = 4223
p11/fs = +1.000000x +0.000000y
p11/ss = +0.000000x +1.000000y
p11/corner_x = 414.0000
p11/corner_y = 10.0000

p12/min_fs = 0
p12/max_fs = 383
p12/min_ss = 4224
p12/max_ss = 4575
p12/fs = +1.000000x +0.000000y
p12/ss = +0.000000x +1.000000y
p12/corner_x = -798.0000
p12/corner_y = 382.0000

p13/min_fs = 0
p13/max_fs = 383
p13/min_ss = 4576
p13/max_ss = 4927
p13/fs = +1.000000x +0.000000y
p13/ss = +0.000000x +1.000000y
p13/corner_x = -394.0000
p13/corner_y = 382.0000

p14/min_fs = 0
p14/max_fs = 383
p14/min_ss = 4928
p14/max_ss = 5279
p14/fs = +1.000000x +0.000000y
p14/ss = +0.000000x +1.000000y
p14/corner_x = 10.0000
p14/corner_y = 382.0000

p15/min_fs = 0
p15/max_fs = 383
p15/min_ss = 5280
p15/max_ss = 5631
p15/fs = +1.000000x +0.000000y
p15/ss = +0.000000x +1.000000y
p15/corner_x = 414.0000
p15/corner_y = 382.0000
