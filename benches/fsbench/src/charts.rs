//! The raw samples as TSV and PNG charts drawn by gnuplot (Debian's `gnuplot-nox`: one
//! package, no extra crates to build on a shared 2-core box, and the `.dat`/`.gp` files it
//! reads stay next to the PNGs for anyone who wants to restyle them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use super::{Measure, Sample, stats};

/// Writes `dir/fs-samples.tsv` (every sample), the charts' data and scripts, and renders
/// `fs-local.png`, `fs-slow.png` and (when measured) `web.png` with gnuplot.
pub fn write(
    dir: &Path,
    targets: &[(String, bool)],
    samples: &BTreeMap<(String, Measure), Vec<Sample>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tsv = String::from("target\tmeasure\tround\tvalue\trw_requests_per_op\n");
    for ((t, m), v) in samples {
        for (i, s) in v.iter().enumerate() {
            let rw = s.rw_per_op.map_or(String::new(), |x| format!("{x:.4}"));
            let _ = writeln!(tsv, "{t}\t{}\t{i}\t{:.4}\t{rw}", m.key(), s.value);
        }
    }
    std::fs::write(dir.join("fs-samples.tsv"), tsv)?;

    // Slowdown against bare, one cluster per measure, one bar per target: time ratio for
    // per-op measures, bare ÷ target for throughputs, so that higher is always worse.
    let measures: Vec<Measure> = Measure::ALL
        .iter()
        .chain(Measure::MORE.iter())
        .copied()
        .filter(|m| samples.keys().any(|(_, k)| k == m))
        .collect();
    let slowdown = |name: &str, m: Measure| -> Option<f64> {
        let (b, ..) = stats(samples, "bare", m)?;
        let (x, ..) = stats(samples, name, m)?;
        Some(if m.is_throughput() { b / x } else { x / b })
    };
    for (file, slow, title) in [
        (
            "fs-local",
            false,
            "Slowdown vs. the bare directory, local RW branch (median; log scale; lower is better)",
        ),
        (
            "fs-slow",
            true,
            "Slowdown vs. the bare directory, slow RW branch (0.5 ms/metadata request; log scale)",
        ),
    ] {
        let names: Vec<&str> = targets
            .iter()
            .filter(|(n, s)| *s == slow && n != "bare")
            .map(|(n, _)| n.as_str())
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut dat = String::from("measure");
        for n in &names {
            dat += &format!("\t{n}");
        }
        dat.push('\n');
        for &m in &measures {
            if names.iter().all(|n| slowdown(n, m).is_none()) {
                continue;
            }
            dat += m.key();
            for n in &names {
                match slowdown(n, m) {
                    Some(r) => dat += &format!("\t{r:.4}"),
                    None => dat += "\tNaN",
                }
            }
            dat.push('\n');
        }
        std::fs::write(dir.join(format!("{file}.dat")), dat)?;
        let gp = format!(
            "set terminal pngcairo size 1400,600 font ',10'\nset output '{file}.png'\n\
             set datafile separator '\\t'\nset title \"{title}\"\nset style data histogram\n\
             set style histogram clustered gap 1\nset style fill solid 0.8 border -1\n\
             set logscale y\nset yrange [0.5:*]\nset ylabel 'x bare'\nset grid ytics\n\
             set xtics rotate by -30\nset key outside right top\n\
             set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2\n\
             plot for [i=2:{}] '{file}.dat' using i:xtic(1) title columnheader(i)\n",
            names.len() + 1
        );
        gnuplot(dir, file, &gp)?;
    }

    // The web workload: requests/s and p99 per target with min–max error bars.
    let web: Vec<&str> = targets
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| samples.contains_key(&(n.to_string(), Measure::WebRps)))
        .collect();
    if !web.is_empty() {
        let mut dat = String::from("target\trps\trps_min\trps_max\tp99\tp99_min\tp99_max\n");
        for n in &web {
            dat += n;
            for m in Measure::WEB {
                match stats(samples, n, m) {
                    Some((x, lo, hi)) => dat += &format!("\t{x:.3}\t{lo:.3}\t{hi:.3}"),
                    None => dat += "\tNaN\tNaN\tNaN",
                }
            }
            dat.push('\n');
        }
        std::fs::write(dir.join("web.dat"), dat)?;
        let gp = "set terminal pngcairo size 1400,550 font ',10'\nset output 'web.png'\n\
                  set datafile separator '\\t'\nset key autotitle columnhead\nset key off\n\
                  set style fill solid 0.8 border -1\nset boxwidth 0.6\n\
                  set xtics rotate by -30\nset grid ytics\nset logscale y\n\
                  set multiplot layout 1,2 title 'PHP page with 100 includes + 3 uploads \
                  (nginx + php-fpm + opcache, wrk -t2 -c2; median, bars = min-max)'\n\
                  set title 'requests/s (higher is better; log scale)'\n\
                  plot 'web.dat' using 0:2:xtic(1) with boxes lc rgb '#3060c0', \
                  '' using 0:2:3:4 with yerrorbars lc rgb 'black' pt 0\n\
                  set title 'p99 latency, ms (lower is better; log scale)'\n\
                  plot 'web.dat' using 0:5:xtic(1) with boxes lc rgb '#c04030', \
                  '' using 0:5:6:7 with yerrorbars lc rgb 'black' pt 0\nunset multiplot\n";
        gnuplot(dir, "web", gp)?;
    }
    Ok(())
}

/// Writes `dir/NAME.gp` and runs gnuplot on it in `dir`.
pub fn gnuplot(dir: &Path, name: &str, script: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(format!("{name}.gp")), script)?;
    let out = Command::new("gnuplot")
        .arg(format!("{name}.gp"))
        .current_dir(dir)
        .output()
        .context("running gnuplot (apt-get install gnuplot-nox)")?;
    if !out.status.success() {
        bail!(
            "gnuplot {name}.gp: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
