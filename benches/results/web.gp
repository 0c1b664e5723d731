set terminal pngcairo size 1400,550 font ',10'
set output 'web.png'
set datafile separator '\t'
set key autotitle columnhead
set key off
set style fill solid 0.8 border -1
set boxwidth 0.6
set xtics rotate by -30
set grid ytics
set logscale y
set multiplot layout 1,2 title 'PHP page with 100 includes + 3 uploads (nginx + php-fpm + opcache, wrk -t2 -c2; median, bars = min-max)'
set title 'requests/s (higher is better; log scale)'
plot 'web.dat' using 0:2:xtic(1) with boxes lc rgb '#3060c0', '' using 0:2:3:4 with yerrorbars lc rgb 'black' pt 0
set title 'p99 latency, ms (lower is better; log scale)'
plot 'web.dat' using 0:5:xtic(1) with boxes lc rgb '#c04030', '' using 0:5:6:7 with yerrorbars lc rgb 'black' pt 0
unset multiplot
