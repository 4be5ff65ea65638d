; cspad: 32 panel(s) of 185 x 388 pixels
; Slab layout: panel k is rows k*185 .. k*185+184 of /entry_1/data_1/data (N, 5920, 388).
; Peak lists put pixel centres at integer coordinates: keep indexamajig's half-pixel shift.
; Written by peaknet-geometry.

photon_energy = 9500 eV
bandwidth = 0.003
clen = 0.14 m
coffset = 0.0
res = 9090.909091
adu_per_photon = 31.86

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
p0/max_fs = 387
p0/min_ss = 0
p0/max_ss = 184
p0/fs = +1.000000x +0.000000y
p0/ss = +0.000000x +1.000000y
p0/corner_x = -789.6364
p0/corner_y = -771.8182

p1/min_fs = 0
p1/max_fs = 387
p1/min_ss = 185
p1/max_ss = 369
p1/fs = +1.000000x +0.000000y
p1/ss = +0.000000x +1.000000y
p1/corner_x = -392.5455
p1/corner_y = -771.8182

p2/min_fs = 0
p2/max_fs = 387
p2/min_ss = 370
p2/max_ss = 554
p2/fs = +1.000000x +0.000000y
p2/ss = +0.000000x +1.000000y
p2/corner_x = 4.5455
p2/corner_y = -771.8182

p3/min_fs = 0
p3/max_fs = 387
p3/min_ss = 555
p3/max_ss = 739
p3/fs = +1.000000x +0.000000y
p3/ss = +0.000000x +1.000000y
p3/corner_x = 401.6364
p3/corner_y = -771.8182

p4/min_fs = 0
p4/max_fs = 387
p4/min_ss = 740
p4/max_ss = 924
p4/fs = +1.000000x +0.000000y
p4/ss = +0.000000x +1.000000y
p4/corner_x = -789.6364
p4/corner_y = -577.7273

p5/min_fs = 0
p5/max_fs = 387
p5/min_ss = 925
p5/max_ss = 1109
p5/fs = +1.000000x +0.000000y
p5/ss = +0.000000x +1.000000y
p5/corner_x = -392.5455
p5/corner_y = -577.7273

p6/min_fs = 0
p6/max_fs = 387
p6/min_ss = 1110
p6/max_ss = 1294
p6/fs = +1.000000x +0.000000y
p6/ss = +0.000000x +1.000000y
p6/corner_x = 4.5455
p6/corner_y = -577.7273

p7/min_fs = 0
p7/max_fs = 387
p7/min_ss = 1295
p7/max_ss = 1479
p7/fs = +1.000000x +0.000000y
p7/ss = +0.000000x +1.000000y
p7/corner_x = 401.6364
p7/corner_y = -577.7273

p8/min_fs = 0
p8/max_fs = 387
p8/min_ss = 1480
p8/max_ss = 1664
p8/fs = +1.000000x +0.000000y
p8/ss = +0.000000x +1.000000y
p8/corner_x = -789.6364
p8/corner_y = -383.6364

p9/min_fs = 0
p9/max_fs = 387
p9/min_ss = 1665
p9/max_ss = 1849
p9/fs = +1.000000x +0.000000y
p9/ss = +0.000000x +1.000000y
p9/corner_x = -392.5455
p9/corner_y = -383.6364

p10/min_fs = 0
p10/max_fs = 387
p10/min_ss = 1850
p10/max_ss = 2034
p10/fs = +1.000000x +0.000000y
p10/ss = +0.000000x +1.000000y
p10/corner_x = 4.5455
p10/corner_y = -383.6364

p11/min_fs = 0
p11/max_fs = 387
p11/min_ss = 2035
p11/max_ss = 2219
p11/fs = +1.000000x +0.000000y
p11/ss = +0.000000x +1.000000y
p11/corner_x = 401.6364
p11/corner_y = -383.6364

p12/min_fs = 0
p12/max_fs = 387
p12/min_ss = 2220
p12/max_ss = 2404
p12/fs = +1.000000x +0.000000y
p12/ss = +0.000000x +1.000000y
p12/corner_x = -789.6364
p12/corner_y = -189.5455

p13/min_fs = 0
p13/max_fs = 387
p13/min_ss = 2405
p13/max_ss = 2589
p13/fs = +1.000000x +0.000000y
p13/ss = +0.000000x +1.000000y
p13/corner_x = -392.5455
p13/corner_y = -189.5455

p14/min_fs = 0
p14/max_fs = 387
p14/min_ss = 2590
p14/max_ss = 2774
p14/fs = +1.000000x +0.000000y
p14/ss = +0.000000x +1.000000y
p14/corner_x = 4.5455
p14/corner_y = -189.5455

p15/min_fs = 0
p15/max_fs = 387
p15/min_ss = 2775
p15/max_ss = 2959
p15/fs = +1.000000x +0.000000y
p15/ss = +0.000000x +1.000000y
p15/corner_x = 401.6364
p15/corner_y = -189.5455

p16/min_fs = 0
p16/max_fs = 387
p16/min_ss = 2960
p16/max_ss = 3144
p16/fs = +1.000000x +0.000000y
p16/ss = +0.000000x +1.000000y
p16/corner_x = -789.6364
p16/corner_y = 4.5455

p17/min_fs = 0
p17/max_fs = 387
p17/min_ss = 3145
p17/max_ss = 3329
p17/fs = +1.000000x +0.000000y
p17/ss = +0.000000x +1.000000y
p17/corner_x = -392.5455
p17/corner_y = 4.5455

p18/min_fs = 0
p18/max_fs = 387
p18/min_ss = 3330
p18/max_ss = 3514
p18/fs = +1.000000x +0.000000y
p18/ss = +0.000000x +1.000000y
p18/corner_x = 4.5455
p18/corner_y = 4.5455

p19/min_fs = 0
p19/max_fs = 387
p19/min_ss = 3515
p19/max_ss = 3699
p19/fs = +1.000000x +0.000000y
p19/ss = +0.000000x +1.000000y
p19/corner_x = 401.6364
p19/corner_y = 4.5455

p20/min_fs = 0
p20/max_fs = 387
p20/min_ss = 3700
p20/max_ss = 3884
p20/fs = +1.000000x +0.000000y
p20/ss = +0.000000x +1.000000y
p20/corner_x = -789.6364
p20/corner_y = 198.6364

p21/min_fs = 0
p21/max_fs = 387
p21/min_ss = 3885
p21/max_ss = 4069
p21/fs = +1.000000x +0.000000y
p21/ss = +0.000000x +1.000000y
p21/corner_x = -392.5455
p21/corner_y = 198.6364

p22/min_fs = 0
p22/max_fs = 387
p22/min_ss = 4070
p22/max_ss = 4254
p22/fs = +1.000000x +0.000000y
p22/ss = +0.000000x +1.000000y
p22/corner_x = 4.5455
p22/corner_y = 198.6364

p23/min_fs = 0
p23/max_fs = 387
p23/min_ss = 4255
p23/max_ss = 4439
p23/fs = +1.000000x +0.000000y
p23/ss = +0.000000x +1.000000y
p23/corner_x = 401.6364
p23/corner_y = 198.6364

p24/min_fs = 0
p24/max_fs = 387
p24/min_ss = 4440
p24/max_ss = 4624
p24/fs = +1.000000x +0.000000y
p24/ss = +0.000000x +1.000000y
p24/corner_x = -789.6364
p24/corner_y = 392.7273

p25/min_fs = 0
p25/max_fs = 387
p25/min_ss = 4625
p25/max_ss = 4809
p25/fs = +1.000000x +0.000000y
p25/ss = +0.000000x +1.000000y
p25/corner_x = -392.5455
p25/corner_y = 392.7273

p26/min_fs = 0
p26/max_fs = 387
p26/min_ss = 4810
p26/max_ss = 4994
p26/fs = +1.000000x +0.000000y
p26/ss = +0.000000x +1.000000y
p26/corner_x = 4.5455
p26/corner_y = 392.7273

p27/min_fs = 0
p27/max_fs = 387
p27/min_ss = 4995
p27/max_ss = 5179
p27/fs = +1.000000x +0.000000y
p27/ss = +0.000000x +1.000000y
p27/corner_x = 401.6364
p27/corner_y = 392.7273

p28/min_fs = 0
p28/max_fs = 387
p28/min_ss = 5180
p28/max_ss = 5364
p28/fs = +1.000000x +0.000000y
p28/ss = +0.000000x +1.000000y
p28/corner_x = -789.6364
p28/corner_y = 586.8182

p29/min_fs = 0
p29/max_fs = 387
p29/min_ss = 5365
p29/max_ss = 5549
p29/fs = +1.000000x +0.000000y
p29/ss = +0.000000x +1.000000y
p29/corner_x = -392.5455
p29/corner_y = 586.8182

p30/min_fs = 0
p30/max_fs = 387
p30/min_ss = 5550
p30/max_ss = 5734
p30/fs = +1.000000x +0.000000y
p30/ss = +0.000000x +1.000000y
p30/corner_x = 4.5455
p30/corner_y = 586.8182

p31/min_fs = 0
p31/max_fs = 387
p31/min_ss = 5735
p31/max_ss = 5919
p31/fs = +1.000000x +0.000000y
p31/ss = +0.000000x +1.000000y
p31/corner_x = 401.6364
p31/corner_y = 586.8182
