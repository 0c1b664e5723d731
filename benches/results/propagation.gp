set terminal pngcairo size 900,500 font ',10'
set output 'propagation.png'
set datafile separator '\t'
set title "Create through 1 node, visible through all 4 others (5 nodes on loopback)"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y
set ylabel 'ms (log scale)'
set xlabel 'background creates/s'
set grid ytics
set key top left
plot for [i=2:4] 'propagation.dat' using i:xtic(1) title columnheader(i)
