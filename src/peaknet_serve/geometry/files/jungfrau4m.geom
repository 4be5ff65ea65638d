; jungfrau4m: 8 panel(s) of 512 x 1024 pixels
; Slab layout: panel k is rows k*512 .. k*512+511 of /entry_1/data_1/data (N, 4096, 1024).
; Peak lists put pixel centres at integer coordinates: keep indexamajig's half-pixel shift.
; Written by peaknet-geometry.

photon_energy = 9500 eV
bandwidth = 0.003
clen = 0.13 m
coffset = 0.0
res = 13333.333333
adu_per_photon = 9.5

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
p0/max_fs = 1023
p0/min_ss = 0
p0/max_ss = 511
p0/fs = +1.000000x +0.000000y
p0/ss = +0.000000x +1.000000y
p0/corner_x = -1034.0000
p0/corner_y = -1054.0000

p1/min_fs = 0
p1/max_fs = 1023
p1/min_ss = 512
p1/max_ss = 1023
p1/fs = +1.000000x +0.000000y
p1/ss = +0.000000x +1.000000y
p1/corner_x = 10.0000
p1/corner_y = -1054.0000

p2/min_fs = 0
p2/max_fs = 1023
p2/min_ss = 1024
p2/max_ss = 1535
p2/fs = +1.000000x +0.000000y
p2/ss = +0.000000x +1.000000y
p2/corner_x = -1034.0000
p2/corner_y = -522.0000

p3/min_fs = 0
p3/max_fs = 1023
p3/min_ss = 1536
p3/max_ss = 2047
p3/fs = +1.000000x +0.000000y
p3/ss = +0.000000x +1.000000y
p3/corner_x = 10.0000
p3/corner_y = -522.0000

p4/min_fs = 0
p4/max_fs = 1023
p4/min_ss = 2048
p4/max_ss = 2559
p4/fs = +1.000000x +0.000000y
p4/ss = +0.000000x +1.000000y
p4/corner_x = -1034.0000
p4/corner_y = 10.0000

p5/min_fs = 0
p5/max_fs = 1023
p5/min_ss = 2560
p5/max_ss = 3071
p5/fs = +1.000000x +0.000000y
p5/ss = +0.000000x +1.000000y
p5/corner_x = 10.0000
p5/corner_y = 10.0000

p6/min_fs = 0
p6/max_fs = 1023
p6/min_ss = 3072
p6/max_ss = 3583
p6/fs = +1.000000x +0.000000y
p6/ss = +0.000000x +1.000000y
p6/corner_x = -1034.0000
p6/corner_y = 542.0000

p7/min_fs = 0
p7/max_fs = 1023
p7/min_ss = 3584
p7/max_ss = 4095
p7/fs = +1.000000x +0.000000y
p7/ss = +0.000000x +1.000000y
p7/corner_x = 10.0000
p7/corner_y = 542.0000
