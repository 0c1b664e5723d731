set terminal pngcairo size 1400,600 font ',10'
set output 'fs-local.png'
set datafile separator '\t'
set title "Slowdown vs. the bare directory, local RW branch (median; log scale; lower is better)"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y
set yrange [0.5:*]
set ylabel 'x bare'
set grid ytics
set xtics rotate by -30
set key outside right top
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2
plot for [i=2:7] 'fs-local.dat' using i:xtic(1) title columnheader(i)
