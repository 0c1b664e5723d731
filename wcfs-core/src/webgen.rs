//! A deterministic generator of web-like paths (uploads by date, cache shards, plugin files),
//! for the footprint tool, benchmarks and the simulator's workload. Path `i` is a pure
//! function of `i` and the seed.

/// Generates paths like `site42/wp-content/uploads/2024/05/img-123456.jpg` (~60 bytes).
#[derive(Clone, Copy, Debug)]
pub struct WebPaths {
    seed: u64,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl WebPaths {
    /// A generator; different seeds give different (but equally shaped) path sets.
    pub fn new(seed: u64) -> WebPaths {
        WebPaths { seed }
    }

    /// The `i`-th path. Distinct `i` give distinct paths.
    pub fn path(&self, i: u64) -> String {
        let h = mix(i ^ self.seed.rotate_left(17));
        let site = h % 97;
        match (h >> 8) % 10 {
            0..=5 => format!(
                "site{site}/wp-content/uploads/{}/{:02}/img-{i}.jpg",
                2015 + (h >> 16) % 10,
                1 + (h >> 24) % 12
            ),
            6..=8 => format!(
                "site{site}/wp-content/cache/{:02x}/{:02x}/page-{i}.html",
                (h >> 16) & 0xff,
                (h >> 24) & 0xff
            ),
            _ => format!(
                "site{site}/wp-content/plugins/plugin{}/assets/f{i}.css",
                (h >> 16) % 300
            ),
        }
    }
}
